"""Log-polar space convolution (LPSC): region maps and the exact execution paths.

Paper: Bing Su and Ji-Rong Wen, "Log-Polar Space Convolution Layers", NeurIPS 2022.

A k_h×k_w window is cut into `rings` distance levels × `sectors` direction sectors; all pixels
of one region share one weight. The region map and pooling matrix are in
`keras_convx.ops.log_polar_regions` (re-exported here).

Execution paths (all exact, agreeing to float32 round-off):

- "dense" (A): synthesise the k_h×k_w kernel `K[q] = W[region(q)] / |region(q)|` (+ the
  centre weight at the centre) and run one ordinary convolution.
- "pool" (B): pool every region of every window (a fixed, weight-free operation), then mix
  the `rings·sectors + 1` pooled maps of every channel with a 1×1 convolution.
- "max" (C): for `pooling="max"`, region max over the window's shifted slices, then the same
  1×1 mixing. There is no dense equivalent of max pooling.

Region pooling has a reference implementation in `keras.ops` (a depthwise convolution with
fixed 0/1 filters) and per-backend fast paths behind `keras_convx.ops.dispatch` (every pixel
of the window belongs to one region, the centre also to the centre column, so pooling is
about k_h·k_w shifted adds, which XLA and torch.compile fuse into one pass over the input).
"""

import keras
import numpy as np

from keras_convx.ops.core import constant
from keras_convx.ops.core import conv_output_length
from keras_convx.ops.core import matmul
from keras_convx.ops.core import matmul_last
from keras_convx.ops.core import window_slice
from keras_convx.ops.core import zero_pad
from keras_convx.ops.dispatcher import backend_query
from keras_convx.ops.dispatcher import dispatch
from keras_convx.ops.dispatcher import fast_path
from keras_convx.ops.dispatcher import portable
from keras_convx.ops.dispatcher import reference_only
from keras_convx.ops.log_polar_regions import POOLINGS  # noqa: F401
from keras_convx.ops.log_polar_regions import normalize_kernel_size  # noqa: F401
from keras_convx.ops.log_polar_regions import validate_region_args  # noqa: F401
from keras_convx.ops.log_polar_regions import ring_thresholds  # noqa: F401
from keras_convx.ops.log_polar_regions import log_polar_regions  # noqa: F401
from keras_convx.ops.log_polar_regions import empty_regions  # noqa: F401
from keras_convx.ops.log_polar_regions import region_sizes  # noqa: F401
from keras_convx.ops.log_polar_regions import pooling_matrix  # noqa: F401
from keras_convx.ops.log_polar_regions import region_offsets

# ---------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------


output_length = conv_output_length


def same_pads(kernel_size):
    """Centre-anchored "same" pads ((top, bottom), (left, right)): (k−1)//2 before."""
    kh, kw = kernel_size
    return (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))


def pad_same(x, kernel_size, data_format="channels_last"):
    """Zero padding anchored at the window centre: (k−1)//2 before, k−1−(k−1)//2 after.

    With it, output position p sees the window centred on input position stride·p, as in the
    paper's formula and the official code (this differs from TensorFlow's "same" alignment
    only for stride > 1).
    """
    pads = list(same_pads(kernel_size))
    if data_format == "channels_last":
        pads = [(0, 0), *pads, (0, 0)]
    else:
        pads = [(0, 0), (0, 0), *pads]
    return zero_pad(x, pads)


# ---------------------------------------------------------------------------------------------
# Region pooling (channels_last, input already padded; valid windows with stride)
# ---------------------------------------------------------------------------------------------


def _pool_depthwise(x, pmatrix, kernel_size, strides, mode):
    """Reference: a depthwise conv whose per-channel filters are the columns of P."""
    kh, kw = kernel_size
    channels = x.shape[-1]
    n_out = pmatrix.shape[1]
    kernel = np.broadcast_to(pmatrix.reshape(kh, kw, 1, n_out), (kh, kw, channels, n_out))
    kernel = constant(np.ascontiguousarray(kernel), x.dtype, x)
    y = keras.ops.depthwise_conv(x, kernel, strides=strides, padding="valid")
    y = keras.ops.reshape(y, (*keras.ops.shape(y)[:3], channels, n_out))
    return keras.ops.transpose(y, (0, 1, 2, 4, 3))


def pool_by_slices(x, pmatrix, kernel_size, strides, mode, offsets=None, written_gradient=False):
    """Region pooling as shifted strided slices: sum (mean/sum) or maximum (max) per region.

    Every window pixel belongs to one region (the centre pixel also to the centre column), so
    this is about k_h·k_w slice-adds in all;
    compiled (XLA, torch.compile) it becomes one fused pass over the input. The backends'
    fast paths compile this function; called as it is, it is the eager reference for "max".

    With `written_gradient=True`, for "mean"/"sum" at stride 1, the gradient is written out
    (`unpool_by_slices`, the adjoint: again k_h·k_w slice-adds) instead of autodiff's, which
    pads every slice's cotangent back to the input's size and adds k_h·k_w full-size tensors.
    TensorFlow's and jax's XLA-compiled poolings use it: a 9×9 64→64 TensorFlow step went
    from 56.6 to 36.8 ms on a 2-core CPU (with `matmul_last` for the mixing), and jax's
    9×9 (2,6,3) 32→32 step with the input gradient (batch 8, 32 px) from 50 to 19 ms.
    torch.compile measured as fast or faster with autodiff's form (11×11: 1.6× slower with
    the written one, which then padded both axes), so it keeps it.

    Returns (B, H_out, W_out, R', C).
    """
    offsets = offsets or region_offsets(pmatrix)
    if not written_gradient or mode == "max" or tuple(strides) != (1, 1) or portable():
        return _pool_forward(x, offsets, kernel_size, strides, mode)

    @keras.ops.custom_gradient
    def fn(x_):
        def grad(*args, upstream=None):
            # jax/tensorflow call grad(upstream); torch calls grad(*inputs, upstream=upstream)
            dy = args[0] if upstream is None else upstream
            return unpool_by_slices(dy, offsets, kernel_size)

        return _pool_forward(x_, offsets, kernel_size, strides, mode), grad

    return fn(x)


def unpool_by_slices(dy, offsets, kernel_size, materialize=None):
    """The adjoint of stride-1 region pooling ("mean"/"sum"): the input gradient.

    `dx[i] = Σ_r w_r Σ_{q ∈ Ω_r} dy_r[i − q]`, one window row at a time: the k_w offsets of
    window row q_y add up over the cotangent padded along the width only (H_out rows each),
    then the k_h row sums are added at their row offsets. (Padding both axes at once let every
    output pixel sum all k_h·k_w offsets, mostly padding on short bands: on jax's CPU, a 128 px
    image's input gradient by 2-row bands took 3× as long.)

    Args:
        dy: (B, H_out, W_out, R', C) cotangent of the pooled maps.
        offsets: `region_offsets(pmatrix)`.
        kernel_size: pair of ints.
        materialize: optional function applied to the stacked (n, B, H_out, W_out + k_w − 1,
            C) row sums (one per window row holding an offset, n ≤ k_h) before they are
            added (jax: `lax.optimization_barrier`, so that XLA does not fuse them back into
            one k_h·k_w-offset loop).

    Returns:
        (B, H_out + k_h − 1, W_out + k_w − 1, C): the gradient w.r.t. the padded input.
    """
    kh, kw = kernel_size
    weights = np.array([w[0] if w else 0.0 for _, w in offsets], np.float64)
    if np.any(weights != 1.0):
        scale = constant(weights.reshape(-1, 1), dy.dtype, dy)
        dy = dy * scale
    dyp = zero_pad(dy, ((0, 0), (0, 0), (kw - 1, kw - 1), (0, 0), (0, 0)))
    regions_of = {}  # window offset -> the regions holding it (the centre can be in two)
    for r, (region, _) in enumerate(offsets):
        for q in region:
            regions_of.setdefault(q, []).append(r)
    rows = {}  # window row q_y -> the sum of its offsets' slices (rows holding one)
    for qy in range(kh):
        for qx in range(kw):
            for r in regions_of.get(qy * kw + qx, ()):
                part = window_slice(dyp[:, :, :, r, :], (0, kw - 1 - qx), (1, kw))
                rows[qy] = rows[qy] + part if qy in rows else part
    if not rows:  # every region empty: no pixel reaches the output
        zeros = keras.ops.zeros_like(window_slice(dyp[:, :, :, 0, :], (0, 0), (1, kw)))
        return zero_pad(zeros, ((0, 0), (kh - 1, 0), (0, 0), (0, 0)))
    if materialize is not None:
        stacked = materialize(keras.ops.stack(list(rows.values())))
        rows = dict(zip(rows, keras.ops.unstack(stacked)))
    dx = None
    for qy, row in rows.items():
        part = zero_pad(row, ((0, 0), (qy, kh - 1 - qy), (0, 0), (0, 0)))
        dx = part if dx is None else dx + part
    return dx


def _pool_forward(x, offsets, kernel_size, strides, mode):
    kh, kw = kernel_size
    pooled = []
    for region, weights in offsets:
        acc = None
        for q in region:
            dy, dx = divmod(q, kw)
            part = window_slice(x, (dy, dx), kernel_size, strides)
            if acc is None:
                acc = part
            elif mode == "max":  # (cast: Keras' torch maximum returns float64 as float32)
                acc = keras.ops.cast(keras.ops.maximum(acc, part), x.dtype)
            else:
                acc = acc + part
        if acc is None:  # an empty region pools to 0
            acc = keras.ops.zeros_like(window_slice(x, (0, 0), kernel_size, strides))
        elif mode != "max" and weights[0] != 1.0:
            acc = acc * weights[0]  # the weights of a "mean" region are all 1/|Ω|
        pooled.append(acc)
    return keras.ops.stack(pooled, axis=3)


def region_pool(x, pmatrix, kernel_size, strides, mode):
    """Pool every log-polar region of every (valid, strided) window of a padded input.

    Args:
        x: padded channels_last input (B, H_pad, W_pad, C).
        pmatrix: static pooling matrix from `pooling_matrix`.
        kernel_size, strides: pairs of ints.
        mode: "mean", "sum" or "max".

    Returns:
        (B, H_out, W_out, R', C) pooled maps (region-major: each region's map is contiguous
        over channels, which is what the 1×1 mixing reads).
    """
    if mode == "max":
        return dispatch("log_polar_region_max", pool_by_slices)(
            x, pmatrix, kernel_size, strides, mode
        )
    return dispatch("log_polar_region_pool", _pool_depthwise)(
        x, pmatrix, kernel_size, strides, mode
    )


# ---------------------------------------------------------------------------------------------
# Weights → dense kernel / mixing matrix
# ---------------------------------------------------------------------------------------------


def synthesize_kernel(kernel, center_kernel, pmatrix, kernel_size):
    """Dense k_h×k_w kernel of path A: K[q, c, o] = Σ_r P[q, r]·W[r, c, o] (+ centre).

    Args:
        kernel: (rings, sectors, C_in/groups, filters) region weights.
        center_kernel: (C_in/groups, filters) or None.
        pmatrix: the static pooling matrix (with a centre column iff `center_kernel`).

    Returns:
        (k_h, k_w, C_in/groups, filters) tensor, usable by any Conv2D.
    """
    kh, kw = kernel_size
    rings, sectors, cin, cout = kernel.shape
    weights = keras.ops.reshape(kernel, (rings * sectors, cin * cout))
    if center_kernel is not None:
        weights = keras.ops.concatenate([weights, keras.ops.reshape(center_kernel, (1, cin * cout))], 0)
    p = constant(np.asarray(pmatrix), weights.dtype, weights)
    dense = matmul(p, weights)
    return keras.ops.reshape(dense, (kh, kw, cin, cout))


def mixing_weights(kernel, center_kernel):
    """(R', C/groups, filters): the region weights, region-major, the centre's last."""
    rings, sectors, cin_g, cout = kernel.shape
    w = keras.ops.reshape(kernel, (rings * sectors, cin_g, cout))
    if center_kernel is not None:
        w = keras.ops.concatenate([w, keras.ops.expand_dims(center_kernel, 0)], 0)
    return w


def pool_then_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups):
    pooled = region_pool(x, pmatrix, kernel_size, strides, mode)
    return mix_regions(pooled, kernel, center_kernel, groups)


def pool_and_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups=1):
    """Paths B/C: region pooling then the 1×1 mixing, through the dispatch point.

    By default `region_pool` then `mix_regions` (the pooled (B, H, W, R', C) tensor is
    materialised between them). A backend may fuse the two (`log_polar_pool_mix`): on a jax
    GPU, with opt-in fast paths, a Pallas kernel pools each region's tile in registers and
    multiplies it straight into the output (stride 1, `groups=1`, "mean"/"sum"; see
    `keras_convx.ops._pallas`; measured no faster than XLA's fusions on an H100 at the
    benchmark sizes, hence opt-in).

    Args:
        x: padded channels_last input (B, H_pad, W_pad, C).
        pmatrix: static pooling matrix; kernel, center_kernel: the layer's weights;
        kernel_size, strides: pairs of ints; mode: "mean", "sum" or "max"; groups: int.

    Returns:
        (B, H_out, W_out, filters), channels_last.
    """
    return dispatch("log_polar_pool_mix", pool_then_mix)(
        x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups
    )


def mix_regions(pooled, kernel, center_kernel, groups=1):
    """Paths B/C's 1×1 mixing: y[..., o] = Σ_{r,c} pooled[..., r, c]·W'[r, c, o].

    Args:
        pooled: (B, H, W, R', C) from `region_pool`.
        kernel: (rings, sectors, C/groups, filters); `center_kernel`: (C/groups, filters) or
            None (then R' = rings·sectors).
        groups: channel groups (input channel group g feeds output group g only).

    Returns:
        (B, H, W, filters), channels_last.
    """
    w = mixing_weights(kernel, center_kernel)
    n_pooled, cin_g, cout = w.shape
    batch_hw = keras.ops.shape(pooled)[:3]
    if groups == 1:
        flat = keras.ops.reshape(pooled, (*batch_hw, n_pooled * cin_g))
        return matmul_last(flat, keras.ops.reshape(w, (n_pooled * cin_g, cout)))
    # Group-major channels for a grouped 1×1 convolution: index g·(R'·C/G) + r·C/G + c.
    grouped = keras.ops.reshape(pooled, (*batch_hw, n_pooled, groups, cin_g))
    grouped = keras.ops.transpose(grouped, (0, 1, 2, 4, 3, 5))
    grouped = keras.ops.reshape(grouped, (*batch_hw, groups * n_pooled * cin_g))
    mix = keras.ops.reshape(w, (1, 1, n_pooled * cin_g, cout))
    return keras.ops.conv(grouped, mix, 1, "valid", "channels_last")


# ---------------------------------------------------------------------------------------------
# Cost model for implementation="auto"
# ---------------------------------------------------------------------------------------------

# Cost of one shifted add of the fast pooling path, in multiply-adds of the backend's
# convolution: pooling is memory-bound, a convolution compute-bound, so the value depends on
# the machine's balance of the two. Fitted on two 2-core CPUs (batch 16, 32×32; 3→16 to
# 128→128 channels; 9×9 (2,6,3) and 11×11 (3,8,2)) so that "auto" picks no pooling path
# measured slower than the dense one:
# - AVX2 EPYC: jax 3–8, tensorflow 5–43, torch (compiled, opt-in) 19–27;
# - AVX-512 EPYC (Zen 5; convolutions ~4× faster, pooling ~2×): tensorflow (with its written
#   pooling gradient) 13–50, torch (opt-in) 54–100 (dense measured faster at 16 and 64
#   channels, pooling at 128); jax pools faster than dense at 16 and 64 channels on both.
# - Re-measured 2026-12-05 on the AVX-512 machine in `fit`'s default mode (train_on_batch,
#   batch 8, 9×9 (2,6,3), 16–128 channels, 32 and 64 px; benchmarks/RESULTS.md, "Log-polar
#   auto"): tensorflow's pooling was faster at every point, 0.72–0.77× the dense path at 16
#   channels and 0.42–0.48× at 32 (the fitted break-even ≈ 9), where the old 40 picked dense:
#   now 12.
# A backend without a fast pooling path takes the dense path. (Torch without the opt-in
# compiled pooling, whose "pool" is the reference depthwise convolution, was priced at 34 for
# a while: pooling from 41 filters per group, fitted on one-layer steps, where it was 0.50–
# 0.84× dense from 64 channels on. A one-layer step never computes the layer's input gradient;
# inside a network (benchmarks/size_sweep.py --input-gradient, batch 8, 9×9 (2,6,3)) the
# depthwise convolution's input gradient made it 1.9–2.4× slower than dense at 48 and 64
# channels on 32 and 64 px, e.g. 149 vs 77 ms.)
POOL_COST = {"jax": 8.0, "tensorflow": 12.0, "torch": 60.0}

# On a GPU the count model does not hold: at these sizes both paths are memory- and
# launch-bound and their times grow alike with the channel count. Measured on an H100 (jax,
# benchmarks/RESULTS_GPU.md; 3→16 to 256→256 channels, batch 16, 32×32): region pooling is
# 0.45–0.78× the dense path for 9×9 (2,6,3) (R' = 13 of 81 taps) and 0.96–1.54× for 11×11
# (3,8,2) (25 of 121). The pooled tensor is R' times the input, so on a GPU "pool" is chosen
# when R' ≤ GPU_MAX_REGION_FRACTION · taps, the threshold lying between the two measured
# configurations (0.160 and 0.207). Backends whose GPU pooling was not measured
# (tensorflow, torch) and other accelerators (TPU) take the dense path.
GPU_MAX_REGION_FRACTION = 0.18
GPU_POOL_BACKENDS = ("jax",)


def choose_implementation(kernel_size, filters, groups, n_pooled, backend=None, has_fast_pool=None,
                          platform=None):
    """The cheaper exact path for `pooling` "mean"/"sum": "dense" or "pool".

    On a CPU, per output pixel and input channel, "dense" costs k_h·k_w·filters/groups
    multiply-adds; "pool" costs R'·filters/groups for the 1×1 mixing plus k_h·k_w shifted
    adds at `POOL_COST[backend]` multiply-adds each. Both costs scale with the number of input
    channels, so it does not enter the comparison. On a GPU (jax) "pool" when
    R' ≤ `GPU_MAX_REGION_FRACTION`·k_h·k_w; on other accelerators, and on GPU backends not
    measured, "dense". Without a usable fast pooling path (torch without the opt-in compiled
    pooling) "pool" would run the reference pooling, a depthwise convolution, measured slower
    than dense inside a network: "dense"; in reference mode (`KERAS_CONVX_REFERENCE`) the
    answer is always "dense".

    Example: on a CPU with tensorflow's fast pooling, a 9×9 (2,6,3) layer pools from 15
    filters per group on: `choose_implementation((9, 9), 16, 1, 13, "tensorflow", True,
    "cpu")` is "pool"; torch without its opt-in pooling always takes "dense".

    Args:
        kernel_size: pair of ints; filters, groups: of the layer; n_pooled: R', the pooled
            regions (with the centre).
        backend: default `keras.backend.backend()`.
        has_fast_pool: default: whether the backend's fast pooling path is usable now.
        platform: "cpu", "gpu" or "tpu"; default: where the backend computes.
    """
    backend = backend or keras.backend.backend()
    if reference_only():
        return "dense"
    if has_fast_pool is None:
        has_fast_pool = fast_path("log_polar_region_pool", backend) is not None
    if not has_fast_pool:
        return "dense"
    if platform is None:
        platform = backend_query("platform", "cpu", backend)
    kh, kw = kernel_size
    taps = kh * kw
    if platform != "cpu":
        fits = platform == "gpu" and backend in GPU_POOL_BACKENDS
        return "pool" if fits and n_pooled <= GPU_MAX_REGION_FRACTION * taps else "dense"
    shift_cost = POOL_COST.get(backend, max(POOL_COST.values()))
    per_group_out = filters / groups
    dense = taps * per_group_out
    pool = n_pooled * per_group_out + taps * shift_cost
    return "pool" if pool < dense else "dense"
