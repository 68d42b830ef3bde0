"""Fast paths for the jax backend, imported lazily by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This module and the Pallas kernels it loads (`keras_convx.ops._pallas`)
are the only ones allowed to import jax.

The log-polar pooling-and-mixing and the E4 aggregation run as jitted `keras.ops` forms that
XLA fuses. Pallas kernels for both (`_pallas`) are opt-in on a GPU
(`keras_convx.ops.set_opt_in_fast_paths(True)`): on an H100 at the benchmark sizes they were
correct but no faster than XLA's fusions (benchmarks/RESULTS_GPU.md). Setting
`PALLAS_ON_CPU = True` sends the CPU through the same kernels in Pallas' interpreter (slow:
for tests of the GPU code path).
"""

import functools

import jax

from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops.dispatcher import opt_in_fast_paths
from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS)


def _platform():
    """"cpu", "gpu" or "tpu": the platform jax computes on by default."""
    platform = jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def _traced(x):
    """True for a value being traced by jax.jit / grad (no concrete value exists)."""
    return isinstance(x, jax.core.Tracer)


QUERIES = {"platform": _platform, "traced": _traced}

@register_fast_path(FAST_PATHS, portable=True)
def strided_slice(x, bounds):
    """`lax.slice`: a slice also for a symbolic (exported dynamic) size, where `jnp`
    indexing becomes a gather (which jax2onnx could not lower for E4's taps)."""
    shape = x.shape
    starts = [b[0] for b in bounds]
    limits = [shape[i] if b[1] is None else b[1] for i, b in enumerate(bounds)]
    return jax.lax.slice(x, starts, limits, [b[2] for b in bounds])


PALLAS_ON_CPU = False


def _pallas_mode():
    """None (no Pallas), False (compiled for the GPU: opt-in) or True (the interpreter)."""
    if PALLAS_ON_CPU:
        return True
    return False if _platform() == "gpu" and opt_in_fast_paths() else None


def _pallas():
    from keras_convx.ops import _pallas as module  # imports jax.experimental.pallas: lazily

    return module


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


@fast
def log_polar_pool_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups):
    """The jitted pooling then the mixing; with Pallas (opt-in, GPU) for stride 1, `groups=1`,
    "mean"/"sum", one kernel that pools each tile in registers and mixes it."""
    interpret = _pallas_mode()
    if interpret is None or mode == "max" or groups != 1 or tuple(strides) != (1, 1):
        return lp.pool_then_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups)
    fn = _pallas().pool_mix_fn(lp.region_offsets(pmatrix), tuple(kernel_size), interpret)
    return fn(x, lp.mixing_weights(kernel, center_kernel))


@functools.lru_cache(maxsize=128)
def _jitted_aggregate(kernel_size, strides):
    return jax.jit(functools.partial(gops.aggregate_shifts, k=kernel_size, strides=strides))


@fast
def e4_aggregate(v, kernels, k, strides):
    """E4 aggregation: the k² shifted multiply-adds jitted into one fused XLA computation; with
    Pallas (opt-in, GPU) three kernels (forward and both gradients, one pass each)."""
    interpret = _pallas_mode()
    if interpret is not None:
        return _pallas().aggregate_fn(k, tuple(strides), interpret)(v, kernels)
    return _jitted_aggregate(k, tuple(strides))(v, kernels)
