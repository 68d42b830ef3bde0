"""Fast paths for the tensorflow backend, imported lazily by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import tensorflow.
"""

import functools

import tensorflow as tf

from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS)


def _replicas_in_sync():
    """Replicas of the current `tf.distribute` strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


@functools.lru_cache(maxsize=None)
def _platform():
    """"gpu" when TensorFlow places ops on a GPU by default, else "cpu" (asked once: listing
    the devices initialises the runtime, after which they cannot change)."""
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def _traced(x):
    """True inside a `tf.function` trace (a graph tensor has no value yet)."""
    return not tf.executing_eagerly() or not hasattr(x, "numpy")


QUERIES = {"replicas_in_sync": _replicas_in_sync, "platform": _platform, "traced": _traced}


@functools.lru_cache(maxsize=128)
def _xla_slice_pool(offsets, kernel_size, strides, mode):
    pool = functools.partial(lp.pool_by_slices, pmatrix=None, kernel_size=kernel_size, strides=strides,
                             mode=mode, offsets=offsets, written_gradient=True)
    return tf.function(pool, jit_compile=True)


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    """Region pooling as XLA-compiled shifted slices (graph-mode slices are not fused), with
    the written-out stride-1 gradient (autodiff's pads per slice were most of the time)."""
    return _xla_slice_pool(lp.region_offsets(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return log_polar_region_pool(x, pmatrix, kernel_size, strides, mode)


@functools.lru_cache(maxsize=128)
def _xla_aggregate(kernel_size, strides):
    return tf.function(functools.partial(gops.aggregate_shifts, k=kernel_size, strides=strides),
                       jit_compile=True)


@fast
def e4_aggregate(v, kernels, k, strides):
    """E4 aggregation: the k² shifted multiply-adds XLA-compiled into one fused kernel."""
    return _xla_aggregate(k, tuple(strides))(v, kernels)
