"""Fast paths for the jax backend, imported by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This module and the two it loads (`keras_convx.ops._pallas`, the Pallas
kernels, and `keras_convx.ops._jax_e4`, E4's whole layer fused by bands) are the only ones
allowed to import jax.

The log-polar pooling-and-mixing and the E4 aggregation run as jitted `keras.ops` forms that
XLA fuses. Pallas kernels for both (`_pallas`) are opt-in on a GPU
(`keras_convx.ops.set_opt_in_fast_paths(True)`): on an H100 at the benchmark sizes they were
correct but no faster than XLA's fusions (benchmarks/RESULTS_GPU.md). Setting
`PALLAS_ON_CPU = True` sends the CPU through the same kernels in Pallas' interpreter (slow:
for tests of the GPU code path).
"""

import functools

import jax

from keras_convx.ops import e4 as e4ops
from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops._jax_e4 import band
from keras_convx.ops._jax_e4 import band_cotangents
from keras_convx.ops._jax_e4 import band_products
from keras_convx.ops._jax_e4 import fused_e4
from keras_convx.ops._jax_e4 import pad_after
from keras_convx.ops._jax_e4 import zeros_after
from keras_convx.ops.core import bind_variables
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
def _jitted_slice_pool(offsets, kernel_size, strides, mode, written_gradient):
    return jax.jit(functools.partial(lp.pool_by_slices, pmatrix=None, kernel_size=kernel_size,
                                     strides=strides, mode=mode, offsets=offsets,
                                     written_gradient=written_gradient))


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    """Region pooling as jitted shifted slices (XLA fuses them into one pass); on the CPU with
    the written-out stride-1 gradient (`lp.unpool_by_slices`: a 32 px step with the input
    gradient 50 → 19 ms; not measured on a GPU, which keeps autodiff's)."""
    return _jitted_slice_pool(lp.region_offsets(pmatrix), tuple(kernel_size), tuple(strides), mode,
                              _platform() == "cpu")(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return log_polar_region_pool(x, pmatrix, kernel_size, strides, mode)


@functools.lru_cache(maxsize=128)
def _tiled_pool_mix(offsets, kernel_size, mode, rows):
    """Stride-1 region pooling ("mean"/"sum") and 1×1 mixing, `rows` output rows per
    iteration of a `fori_loop`: each band's pooled maps (R' times the band's input) are made,
    mixed and dropped; the backward pass pools the band again, then unpools its cotangent
    (`lp.unpool_by_slices`) into the input gradient, halo rows adding up across bands. The
    pooled tensor of the whole image never exists."""
    kh, kw = kernel_size
    jnp, lax = jax.numpy, jax.lax

    def pool(xb):  # (B, rows + kh − 1, W_pad, C) → (B, rows, W, R'·C)
        pooled = lp.pool_by_slices(xb, None, kernel_size, (1, 1), mode, offsets=offsets)
        return pooled.reshape(*pooled.shape[:3], -1)

    def padded(x, after=None):  # the backward pass's made anew once dy exists (`pad_after`)
        extra = -(x.shape[1] - kh + 1) % rows
        xp = pad_after(x, ((0, 0), (0, extra), (0, 0), (0, 0)), after)
        return xp, (xp.shape[1] - kh + 1) // rows

    def band(x, r0, size):
        return lax.dynamic_slice_in_dim(x, r0, size, axis=1)

    @jax.custom_vjp
    def op(x, w):  # x padded (B, H + kh − 1, W + kw − 1, C); w (R'·C, F)
        xp, count = padded(x)
        width = x.shape[2] - kw + 1

        def body(b, y):
            out = pool(band(xp, b * rows, rows + kh - 1)) @ w
            return lax.dynamic_update_slice_in_dim(y, out, b * rows, axis=1)

        y = zeros_after((x.shape[0], count * rows, width, w.shape[-1]), x.dtype, x)
        return lax.fori_loop(0, count, body, y)[:, :x.shape[1] - kh + 1]

    def forward(x, w):
        return op(x, w), (x, w)

    def backward(saved, dy):
        x, w = saved
        xp, count = padded(x, dy)
        dy = jnp.pad(dy, ((0, 0), (0, count * rows - dy.shape[1]), (0, 0), (0, 0)))

        def body(b, carry):
            dxp, dw = carry
            r0 = b * rows
            pooled, g = pool(band(xp, r0, rows + kh - 1)), band(dy, r0, rows)
            dpooled = (g @ w.T).reshape(*g.shape[:3], len(offsets), -1)
            dxb = lp.unpool_by_slices(dpooled, offsets, kernel_size, lax.optimization_barrier)
            dxp = lax.dynamic_update_slice_in_dim(
                dxp, band(dxp, r0, rows + kh - 1) + dxb, r0, axis=1)
            # the weight gradient summed over bands in float32 (one rounding at the end)
            return dxp, dw + jnp.einsum("bhwk,bhwf->kf", pooled, g,
                                        preferred_element_type=jnp.float32)

        dxp, dw = lax.fori_loop(0, count, body,
                                (zeros_after(xp.shape, xp.dtype, dy),
                                 jnp.zeros(w.shape, jnp.float32)))
        return dxp[:, :x.shape[1]], dw.astype(w.dtype)

    op.defvjp(forward, backward)
    return jax.jit(op)


@fast
def log_polar_pool_mix(x, pmatrix, kernel, center_kernel, kernel_size, strides, mode, groups):
    """Pooling then mixing. On the CPU at stride 1, `groups=1`, "mean"/"sum", static sizes and
    a pooled tensor over 64 bands' worth (32 MiB): by bands of rows (`_tiled_pool_mix`), never
    holding the whole pooled tensor;
    with Pallas (opt-in, GPU) for the same cases, one kernel that pools each tile in
    registers and mixes it; otherwise the jitted pooling, then the mixing."""
    interpret = _pallas_mode()
    simple = mode != "max" and groups == 1 and tuple(strides) == (1, 1)
    static = all(isinstance(d, int) for d in x.shape)
    if interpret is None and simple and static and _platform() == "cpu":
        offsets = lp.region_offsets(pmatrix)
        batch = x.shape[0]
        height, width = x.shape[1] - kernel_size[0] + 1, x.shape[2] - kernel_size[1] + 1
        per_pixel = len(offsets) * x.shape[3]
        # Measured (batch 8, 32 channels, 9×9 (2,6,3)): with a 14 MB pooled tensor (32 px)
        # the whole-image form was faster (6.8 vs 14.8 ms; with the input gradient about equal,
        # 19 vs 18), from 54 MB (64 px) the bands (with the input gradient 57 vs 76 ms; 128 px
        # 233 vs 310 ms, memory 384 → 76 MB).
        if batch * height * width * per_pixel * x.dtype.itemsize > 64 * gops.BAND_BYTES:
            w = lp.mixing_weights(kernel, center_kernel)
            rows = gops.band_rows(batch, height, width, per_pixel, x.dtype.itemsize)
            return _tiled_pool_mix(offsets, tuple(kernel_size), mode, rows)(
                x, w.reshape(-1, w.shape[-1]))
    if interpret is None or not simple:
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


def _tiles(shape, strides):
    """Whether E4's banded CPU paths apply: stride 1, a static size (not under jax.export's
    shape polymorphism) with images in it, the CPU, no Pallas."""
    static = all(isinstance(d, int) for d in shape)
    return (tuple(strides) == (1, 1) and static and 0 not in shape and _platform() == "cpu"
            and _pallas_mode() is None)


@functools.lru_cache(maxsize=128)
def _tiled_generate_aggregate(k, rows):
    """`generate_and_aggregate` at stride 1, `rows` output rows at a time in a `fori_loop`
    (sequential, so one band's temporaries at a time): each band's kernels are generated,
    used and dropped; the backward pass regenerates them band by band (one more
    (F × k²·A) GEMM over the image) and writes both gradients out, so no tensor of all the
    kernels, nor of their cotangent, ever exists. The image is padded to whole bands."""
    p = (k - 1) // 2
    jnp, lax = jax.numpy, jax.lax

    def kernels_of(f, block):
        b, h, w, _ = f.shape
        return (f @ block).reshape(b, h, w, k * k, -1)

    def padded(v, features, after=None):
        """(vp, fp, bands): v with k−1 halo rows/columns and both padded to whole bands (the
        backward pass's made anew once dy exists, `pad_after`)."""
        extra = -features.shape[1] % rows
        vp = pad_after(v, ((0, 0), (p, p + extra), (p, p), (0, 0), (0, 0)), after)
        fp = pad_after(features, ((0, 0), (0, extra), (0, 0), (0, 0)), after)
        return vp, fp, fp.shape[1] // rows

    @jax.custom_vjp
    def op(v, features, block):
        vp, fp, count = padded(v, features)
        width = features.shape[2]

        def body(b, y):
            r0 = b * rows
            kernels = kernels_of(band(fp, r0, rows), block)
            out = band_products(band(vp, r0, rows + 2 * p), kernels, k, rows, width)
            return lax.dynamic_update_slice_in_dim(y, out, r0, axis=1)

        y = zeros_after((v.shape[0], count * rows, width, *v.shape[3:]), v.dtype, v)
        return lax.fori_loop(0, count, body, y)[:, :features.shape[1]]

    def forward(v, features, block):
        return op(v, features, block), (v, features, block)

    def backward(saved, dy):
        v, features, block = saved
        vp, fp, count = padded(v, features, dy)
        height, width = features.shape[1:3]
        dy = jnp.pad(dy, ((0, 0), (0, count * rows - height), (0, 0), (0, 0), (0, 0)))

        def body(b, carry):
            dvp, dfp, dblock = carry
            r0 = b * rows
            f, vb = band(fp, r0, rows), band(vp, r0, rows + 2 * p)
            dvb, dkernels = band_cotangents(vb, kernels_of(f, block), band(dy, r0, rows), k,
                                            jnp.zeros_like(vb))
            dvp = lax.dynamic_update_slice_in_dim(
                dvp, band(dvp, r0, rows + 2 * p) + dvb, r0, axis=1)
            dfp = lax.dynamic_update_slice_in_dim(dfp, dkernels @ block.T, r0, axis=1)
            # the weight gradient summed over bands in float32 (one rounding at the end)
            return dvp, dfp, dblock + jnp.einsum("bhwf,bhwo->fo", f, dkernels,
                                                 preferred_element_type=jnp.float32)

        dvp, dfp, dblock = lax.fori_loop(0, count, body, (
            zeros_after(vp.shape, vp.dtype, dy), zeros_after(fp.shape, fp.dtype, dy),
            jnp.zeros(block.shape, jnp.float32)))
        return dvp[:, p:p + height, p:p + width], dfp[:, :height], dblock.astype(block.dtype)

    op.defvjp(forward, backward)
    return jax.jit(op)


@fast
def e4_generate_aggregate(v, features, block, k, strides):
    """E4 kernel generation + aggregation, on the CPU tiled by bands of rows with the kernels
    regenerated in the backward pass (`_tiled_generate_aggregate`); at stride > 1, with a
    symbolic size (jax.export), on a GPU (not measured there) and with Pallas, the reference
    (whole kernel tensor, then the `e4_aggregate` fast path)."""
    if not _tiles(features.shape, strides):
        kernels = (features @ block).reshape(*features.shape[:3], k * k, block.shape[-1] // (k * k))
        return e4_aggregate(v, kernels, k, strides)
    batch, height, width, _ = features.shape
    rows = gops.band_rows(batch, height, width, block.shape[-1], block.dtype.itemsize)
    return _tiled_generate_aggregate(k, rows)(v, features, block)


@fast
def e4_apply(x, reduce, gamma, beta, block, encoder, k, strides, epsilon):
    """E4's whole computation from its input: on the CPU at stride 1 with a static size (and
    without Pallas), one custom VJP by bands of rows that keeps only `x` and per-image
    statistics for the backward pass (`_jax_e4.fused_e4`); otherwise the reference, step by
    step."""
    if not _tiles(x.shape, (strides, strides)):
        return e4ops.e4_apply_reference(x, reduce, gamma, beta, block, encoder, k, strides,
                                        epsilon)
    batch, height, width, _ = x.shape
    rows = gops.band_rows(batch, height, width, block.shape[-1], block.dtype.itemsize)
    return fused_e4(k, rows, float(epsilon))(x, reduce, gamma, beta, block, encoder)


@fast
def recompute(fn, x, variables):
    """`ops.core.recompute`: a custom VJP of `fn` bound to its weights' values
    (`ops.core.bind_variables`) that saves its arguments and
    recomputes `fn` in the backward pass from `x` plus a zero computed from the cotangent.
    That data dependency keeps XLA from scheduling the recomputation before the backward pass
    starts: with `jax.checkpoint` (Keras' `remat`), XLA's CPU scheduler ran it during the
    forward pass and the step kept every intermediate (4 E4 layers at 64 px: 119 MB of temp
    vs 114 without; 76 MB with this, 39 MB since the layers' banded paths make their loop
    buffers and pads only once needed, `zeros_after`)."""
    jnp = jax.numpy
    fn, values = bind_variables(fn, variables)

    @jax.custom_vjp
    def run(x, *values):
        return fn(x, *values)

    def forward(x, *values):
        return fn(x, *values), (x, values)

    def backward(saved, dy):
        x, values = saved
        return jax.vjp(fn, x + zeros_after((), x.dtype, dy), *values)[1](dy)

    run.defvjp(forward, backward)
    return run(x, *values)
