"""Fast paths for the jax backend, imported lazily by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import jax.
"""

import functools

import jax

from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS)


def _platform():
    """"cpu", "gpu" or "tpu": the platform jax computes on by default."""
    platform = jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


QUERIES = {"platform": _platform}


@functools.lru_cache(maxsize=128)
def _jitted_slice_pool(offsets, kernel_size, strides, mode):
    return jax.jit(functools.partial(lp.pool_by_slices, pmatrix=None, kernel_size=kernel_size,
                                     strides=strides, mode=mode, offsets=offsets))


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    """Region pooling as jitted shifted slices: XLA fuses them into one pass."""
    return _jitted_slice_pool(lp.region_offsets(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return log_polar_region_pool(x, pmatrix, kernel_size, strides, mode)


@functools.lru_cache(maxsize=128)
def _jitted_aggregate(kernel_size, strides):
    return jax.jit(functools.partial(gops.aggregate_shifts, k=kernel_size, strides=strides))


@fast
def e4_aggregate(v, kernels, k, strides):
    """E4 aggregation: the k² shifted multiply-adds jitted into one fused XLA computation."""
    return _jitted_aggregate(k, tuple(strides))(v, kernels)
