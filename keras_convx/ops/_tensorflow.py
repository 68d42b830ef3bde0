"""Fast paths for the tensorflow backend, imported by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import tensorflow.
"""

import contextvars
import functools

import tensorflow as tf

from keras_convx.ops import e4 as e4ops
from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops._tensorflow_e4 import (after, band_kernels, fused_e4, row_bands, stitch_bands,
                                            xla_band_dinput, xla_band_dkernels,
                                            xla_band_forward)
from keras_convx.ops._tensorflow_e4_xla import fused_e4_xla
from keras_convx.ops.core import bind_variables
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


def _in_xla():
    """True while tracing a function that XLA compiles whole (a `jit_compile=True` step).
    TensorFlow has no public query; its internal `control_flow_util` answers it."""
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


# Inside a recomputed layer (`recompute` at the end, which the caller chose to trade time
# for memory) E4's generation tiles every image size where the whole layer is not fused
# (`e4_apply`: where its step-by-step reference is called itself), by bands of this many
# `ops.group.BAND_BYTES` per image. Measured (four 8-field E4 layers in a row after a 1×1
# stem, batch 8, fit's graph mode; RESULTS.md, "E4 as images grow"): the allocator peak at
# 64 px 232 → 70–81 MB (GroupConv2D 28) for +6–10% step time, at 128 px 307 → 200 MB; bands
# of 512 KiB per image kept 62 / 192 MB for a few % more.
RECOMPUTE_BAND_FACTOR = 2
_RECOMPUTING = contextvars.ContextVar("keras_convx_tf_recomputing", default=False)


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
def _xla_unpool(offsets, kernel_size):
    return tf.function(functools.partial(lp.unpool_by_slices, offsets=offsets,
                                         kernel_size=kernel_size), jit_compile=True)


def _banded_pool_mix(x, w, offsets, kernel_size, mode, rows):
    """Stride-1 region pooling ("mean"/"sum") and 1×1 mixing by bands of `rows` output rows:
    each band's pooled maps (R' times the band's input) are made by the XLA-compiled slices,
    mixed and dropped; the backward pass pools the band again and unpools its cotangent
    (`lp.unpool_by_slices`, XLA-compiled), the halo rows adding up across bands. The pooled
    tensor of the whole image never exists."""
    kh = kernel_size[0]
    height, n = x.shape[1] - kh + 1, w.shape[0]
    bands = row_bands(height, rows)
    pool = _xla_slice_pool(offsets, kernel_size, (1, 1), mode)

    def mix(xb, w):  # (B, r + kh − 1, W_pad, C) → (B, r, W, F)
        pooled = pool(xb)
        out = tf.matmul(tf.reshape(pooled, (-1, n)), w)
        return tf.reshape(out, tf.concat([tf.shape(pooled)[:3], [w.shape[1]]], 0))

    @tf.custom_gradient
    def fn(x, w):
        ys = []
        for r0, r1 in bands:
            ys.append(after(ys[-1] if ys else None,
                            lambda r0=r0, r1=r1: mix(x[:, r0:r1 + kh - 1], w)))
        y = tf.concat(ys, 1)

        def grad(dy):
            unpool = _xla_unpool(offsets, tuple(kernel_size))
            parts, dw = [], None
            for r0, r1 in bands:
                def band(r0=r0, r1=r1):
                    xb, g = x[:, r0:r1 + kh - 1], dy[:, r0:r1]
                    flat = tf.reshape(pool(xb), (-1, n))
                    g2 = tf.reshape(g, (-1, w.shape[1]))
                    dpooled = tf.reshape(tf.matmul(g2, w, transpose_b=True), tf.concat(
                        [tf.shape(g)[:3], [len(offsets), x.shape[3]]], 0))
                    part = tf.matmul(tf.cast(flat, tf.float32), tf.cast(g2, tf.float32),
                                     transpose_a=True)
                    return unpool(dpooled), part

                dxb, part = after(dy if dw is None else dw, band)  # after dy: see `after`
                dw = part if dw is None else dw + part
                parts.append(dxb)
            return stitch_bands(parts, bands, kh - 1), tf.cast(dw, w.dtype)

        return y, grad

    return fn(x, w)


# Region pooling + mixing is tiled by bands of this many `ops.group.BAND_BYTES` of pooled maps
# per image (512 KiB) once one image's pass two bands. Measured (four 9×9 (2,6,3) 32-channel
# layers after a 1×1 stem, batch 8, fit's graph mode; RESULTS.md): allocator peak at 32 / 64 /
# 128 px 99 / 326 / 1305 MB whole → 40 / 56 / 163–175 MB (Conv2D 9×9: 7 / 28 / 142) at the
# same step time within this machine's noise (−6 to +3%); bands of 2 MiB per image kept 91 /
# 192 MB at 64 / 128 px, of 4 MiB took +23% at 128 px, of 256 KiB +4–9% at 32 px.
POOL_BAND_FACTOR = 1


@fast
def log_polar_pool_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups):
    """Pooling then mixing. On the CPU at stride 1, `groups=1`, "mean"/"sum" and a static
    image size, once one image's pooled maps pass two bands (`POOL_BAND_FACTOR` ·
    `ops.group.BAND_BYTES` each): by bands of rows (`_banded_pool_mix`), never holding the
    whole pooled tensor (R' times the input); otherwise the XLA-compiled pooling, then the
    mixing (`lp.pool_then_mix`). Bands are sized per image because `fit` traces with an
    unknown batch size. Not inside a function XLA compiles whole (`jit_compile=True`): XLA
    schedules the bands together there (four layers at 128 px: 1,408 MB and 899 ms a step in
    bands, 1,098 MB and 762 ms whole)."""
    x = tf.convert_to_tensor(x)
    kh, kw = kernel_size
    if (mode != "max" and groups == 1 and tuple(strides) == (1, 1) and _platform() == "cpu"
            and None not in x.shape[1:] and not _in_xla()):
        offsets = lp.region_offsets(pmatrix)
        height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
        per_pixel, itemsize = len(offsets) * x.shape[3], x.dtype.size
        band = POOL_BAND_FACTOR * gops.BAND_BYTES
        if height * width * per_pixel * itemsize > 2 * band:
            w = lp.mixing_weights(kernel, center_kernel)
            rows = gops.band_rows(1, height, width, per_pixel, itemsize, band)
            return _banded_pool_mix(x, tf.reshape(w, (-1, w.shape[-1])), offsets,
                                    tuple(kernel_size), mode, rows)
    return lp.pool_then_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups)


@functools.lru_cache(maxsize=128)
def _xla_group_norm_relu(groups, epsilon):
    return tf.function(functools.partial(gops.group_norm_relu_reference, groups=groups,
                                         epsilon=epsilon), jit_compile=True)


@fast
def group_norm_relu(t, gamma, beta, groups, epsilon):
    """`ops.group.group_norm_relu`'s `keras.ops` passes XLA-compiled into fused kernels (E4's
    generator block, forward + backward, batch 8, 64 px, 8 groups of 4 channels, 2-core CPU:
    12.3 → 6.6 ms against graph mode's separate ops)."""
    return _xla_group_norm_relu(groups, epsilon)(t, gamma, beta)


@functools.lru_cache(maxsize=128)
def _xla_aggregate(kernel_size, strides):
    return tf.function(functools.partial(gops.aggregate_shifts, k=kernel_size, strides=strides),
                       jit_compile=True)


@fast
def e4_aggregate(v, kernels, k, strides):
    """E4 aggregation: the k² shifted multiply-adds XLA-compiled into one fused kernel."""
    return _xla_aggregate(k, tuple(strides))(v, kernels)


def _banded(v, features, block, k, rows):
    """Stride-1 generation + aggregation by bands of `rows` output rows: a band's kernels are
    one matrix product, used by one XLA-compiled aggregation call and dropped; the backward
    pass regenerates them band by band (the feature and weight gradients as matrix products
    outside XLA, multi-threaded) and adds the overlapping halo rows of dv (no autodiff through
    slices, which pads every band's gradient to the whole input)."""
    p, height = (k - 1) // 2, features.shape[1]
    bands = row_bands(height, rows)

    @tf.custom_gradient
    def fn(v, features, block):
        vp = tf.pad(v, [[0, 0], [p, p], [p, p], [0, 0], [0, 0]])
        forward, ys = xla_band_forward(k), []
        for r0, r1 in bands:
            ys.append(after(ys[-1] if ys else None, lambda r0=r0, r1=r1: forward(
                vp[:, r0:r1 + 2 * p], band_kernels(features[:, r0:r1], block, k))))
        y = tf.concat(ys, 1)

        def grad(dy):
            dkernels, dinput = xla_band_dkernels(k), xla_band_dinput(k)
            parts, dfeatures, dblock = [], [], None
            for r0, r1 in bands:
                def band(r0=r0, r1=r1):  # every op of the band after dy: see `after`
                    f, dyb = features[:, r0:r1], dy[:, r0:r1]
                    dk = tf.reshape(dkernels(vp[:, r0:r1 + 2 * p], dyb), (-1, block.shape[-1]))
                    df = tf.reshape(tf.matmul(dk, block, transpose_b=True), tf.shape(f))
                    db = tf.matmul(tf.cast(tf.reshape(f, (-1, f.shape[-1])), tf.float32),
                                   tf.cast(dk, tf.float32), transpose_a=True)
                    # the padded kernels once dk is spent (`xla_band_dkernels`)
                    return df, db, after((df, db), lambda: dinput(
                        band_kernels(f, block, k, k - 1), dyb))

                # the next band after this one's both halves (dblock: its first only)
                df, db, dvh = after(dy if dblock is None else (dblock, parts[-1]), band)
                dfeatures.append(df)
                dblock = db if dblock is None else dblock + db
                parts.append(dvh)
            dv = stitch_bands(parts, bands, 2 * p)[:, p:p + v.shape[1], p:p + v.shape[2]]
            return dv, tf.concat(dfeatures, 1), tf.cast(dblock, block.dtype)

        return y, grad

    return fn(v, features, block)


# TensorFlow's E4 bands (where the whole layer is not fused, `e4_apply`: its step-by-step
# reference or `ops.group.generate_and_aggregate` called itself) hold this many
# `ops.group.BAND_BYTES` of kernels per image (4 MiB), and an image's kernels are tiled once
# they pass two bands (8 MiB: ~100 px at k 5, 2 slices, p4). Measured (before the fused layer,
# in fit's default graph mode, batch 8, k 5, 8/16/32 p4 fields; benchmarks/RESULTS.md,
# "E4 as images grow"): at 128 px the step's allocator peak 740/952/1234 → 279/429/736 MB for
# +5–11% time; tiling smaller images too (one band at 32–64 px) saved 30–45% of their memory
# (57 → 32 MB at 32 px) for +5–24%, and bands of 512 KiB per image cost +11–49% a step at 64 px.
IMAGE_BAND_FACTOR = 8


def _tiled_by_image(height, width, block):
    """Does one image's kernels pass two image bands (`e4_generate_aggregate` tiles them)?"""
    kernel_bytes = height * width * block.shape[-1] * block.dtype.size
    return kernel_bytes > 2 * IMAGE_BAND_FACTOR * gops.BAND_BYTES


@fast
def e4_generate_aggregate(v, features, block, k, strides):
    """E4 kernel generation + aggregation. On the CPU at stride 1 with a static image size,
    once one image's kernels pass two bands (`IMAGE_BAND_FACTOR` · `ops.group.BAND_BYTES`
    each), or at any size inside a recomputed layer (bands of `RECOMPUTE_BAND_FACTOR` ·
    `BAND_BYTES`): by bands of rows (`_banded`), the kernels regenerated in the backward pass,
    so neither all the kernels nor their cotangent exist; otherwise the whole kernel tensor and
    the XLA-compiled aggregation (`e4_aggregate`). Bands are sized per image because `fit`
    traces with an unknown batch size."""
    v, features, block = (tf.convert_to_tensor(t) for t in (v, features, block))
    _, height, width, _ = features.shape
    recomputing = _RECOMPUTING.get()
    band = (RECOMPUTE_BAND_FACTOR if recomputing else IMAGE_BAND_FACTOR) * gops.BAND_BYTES
    if (tuple(strides) == (1, 1) and _platform() == "cpu" and None not in (height, width)
            and None not in v.shape[1:3]
            and (recomputing or _tiled_by_image(height, width, block))):
        rows = gops.band_rows(1, height, width, block.shape[-1], block.dtype.size, band)
        return _banded(v, features, block, k, rows)
    return e4_aggregate(v, band_kernels(features, block, k), k, strides)


# E4's whole layer runs fused by bands of rows (`_tensorflow_e4.fused_e4`), bands of this many
# `ops.group.BAND_BYTES` of kernels per image (512 KiB). Measured (one layer after a 1×1 stem,
# batch 8, k 5, fit's graph mode, against the step-by-step path; benchmarks/RESULTS.md, eighth
# pass): allocator peak at 32 / 64 / 128 px, 8 fields 57 / 228 / 272 → 27 / 46 / 113 MB for
# −1 / +11 / +9% time, 16 fields 60 / 209 / 471 → 40 / 74 / 209 MB for +17 / +21 / −2%
# (before the backward's bands were made after dy, `after`; since, 8 fields: 28 / 49 / 111 MB;
# with the one-pass backward, tenth pass, 21.8 / 37.8 / 105.0 MB). At least `FUSED_MIN_BANDS`
# per image (twelfth pass, with the band backward in two halves): at 32 px 14–17 → 7 MB
# (GroupConv2D 4) at the same time; 6 bands 4.3 MB for +17% time.
FUSED_BAND_FACTOR = 1
FUSED_MIN_BANDS = 4
# Inside a function XLA compiles whole, the bands are a `tf.while_loop`
# (`_tensorflow_e4_xla.fused_e4_xla`) of at most this many `ops.group.BAND_BYTES` of kernels
# per image (512 KiB) and at most max(2, height / `XLA_MIN_BANDS`) rows, a divisor of the
# height where one is (2 / 4 / 4 rows at 32 / 64 / 128 px, 8 fields). Measured (one 8-field
# layer after a 1×1 stem, batch 8, k 5; RESULTS.md, thirteenth pass), XLA's bytes at 32 / 64 /
# 128 px with bands of 2 / 4 / 8 rows 10.5 / 37.7 / 146.9, 12.0 / 37.7 / 146.9, 15.3 / 43.9 /
# 146.9 MB (GroupConv2D 7.2 / 28.3 / 112.3; before the remainder's x waited on the loop);
# the step's time in one process at 32 px 1.83–2.33×, 1.61–2.08×, 1.49–1.91× a
# GroupConv2D's (the unrolled bands 1.42–1.72×), at 64–128 px 1.39–1.70×.
XLA_BAND_FACTOR = 1
XLA_MIN_BANDS = 16


@fast
def e4_apply(x, reduce, gamma, beta, block, encoder, k, strides, epsilon):
    """E4's whole computation from its input: on the CPU at stride 1 with a static image size,
    by bands of rows in one custom gradient that keeps only `x` and per-image statistics for
    the backward pass; otherwise the reference, step by step.

    In graph mode (`fit`'s default on a CPU) the bands are unrolled, one after the other by
    control dependencies (`_tensorflow_e4.fused_e4`). Inside a function XLA compiles whole
    (`jit_compile=True`), XLA ignores control dependencies and schedules unrolled bands
    together, so there the bands are the iterations of a `tf.while_loop`
    (`_tensorflow_e4_xla.fused_e4_xla`)."""
    x, reduce, gamma, beta, block, encoder = (
        tf.convert_to_tensor(t) for t in (x, reduce, gamma, beta, block, encoder))
    _, height, width, _ = x.shape
    if strides != 1 or _platform() != "cpu" or None in (height, width):
        return e4ops.e4_apply_reference(x, reduce, gamma, beta, block, encoder, k, strides,
                                        epsilon)
    per_pixel, itemsize = block.shape[-1], block.dtype.size
    if _in_xla():
        rows = gops.band_rows(1, height, width, per_pixel, itemsize,
                              XLA_BAND_FACTOR * gops.BAND_BYTES, XLA_MIN_BANDS)
        # whole bands where a divisor allows: the output then needs no slice (a copy)
        rows = max((r for r in range(2, rows + 1) if height % r == 0), default=rows)
        return fused_e4_xla(x, reduce, gamma, beta, block, encoder, k, float(epsilon), rows)
    rows = gops.band_rows(1, height, width, per_pixel, itemsize,
                          FUSED_BAND_FACTOR * gops.BAND_BYTES, FUSED_MIN_BANDS)
    return fused_e4(x, reduce, gamma, beta, block, encoder, k, float(epsilon), rows)


@fast
def recompute(fn, x, variables):
    """`ops.core.recompute`: `tf.recompute_grad` of `fn` bound to its weights' values
    (`ops.core.bind_variables`). Passed as inputs, the weights get their gradients inside a
    stateless call too (`Model.stateless_call`, where they are tensors, which
    `tf.recompute_grad` would not watch). E4's generation + aggregation tiles every image size
    inside it where the whole layer is not fused (`e4_apply`)."""
    fn, values = bind_variables(fn, variables)

    def recomputing(*args):  # the forward pass and its rerun both tile (`e4_generate_aggregate`)
        token = _RECOMPUTING.set(True)
        try:
            return fn(*args)
        finally:
            _RECOMPUTING.reset(token)

    return tf.recompute_grad(recomputing)(x, *values)
