"""Fast paths for the torch backend, imported by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import torch.

The region-pooling path is torch.compile'd. Per training step of a 9×9 (2,6,3) layer it
measured 1.7× faster than the dense path at 64→64 channels on an AVX2 2-core CPU, but 1.4×
slower at 64 and 1.3× faster at 128 channels on an AVX-512 one (whose convolutions are ~4×
faster; the cost model's POOL_COST covers both), and compiling costs seconds to tens of seconds
per input shape, so it is opt-in (`keras_convx.ops.set_opt_in_fast_paths(True)` or
`KERAS_CONVX_OPT_IN=1`). So is the compiled form of E4's banded aggregation on the CPU (each
band's k² multiply-adds as one torch.compile'd loop, forward and backward); E4's planar bands,
its whole layer fused by bands (`e4_apply`, `keras_convx.ops._torch_e4`) and their device
choice are not opt-in.
"""

import functools
import types

import keras
import numpy as np
import torch
import torch.utils.checkpoint

from keras_convx.ops import e4 as e4ops
from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops._torch_e4 import (EagerBands, aggregate_band, aggregate_band_backward,
                                        fused_e4, product, weight_gradient, windows)
from keras_convx.ops.core import bind_variables
from keras_convx.ops.dispatcher import opt_in_fast_paths, register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS, opt_in=True)


def _own_code(fn):
    """A copy of `fn` with a code object of its own. torch.compile keeps the graphs it
    compiles per code object, at most `torch._dynamo.config.recompile_limit` (8) of them, and
    past that runs the function uncompiled (a logged warning, no error): one copy per
    configuration (and, for the E4 bands, input shape) keeps each compiled. (Measured: the
    ninth E4 band shape in one process ran 3× slower than compiled. A compiled
    `functools.partial` does not help: torch.compile runs every partial through one shared
    wrapper function, so all of them shared one limit.)"""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


@functools.lru_cache(maxsize=128)
def _compiled_slice_pool(offsets, kernel_size, strides, mode):
    """The region pooling compiled for one configuration, in a function of its own."""
    def pool(x):
        return lp.pool_by_slices(x, pmatrix=None, kernel_size=kernel_size, strides=strides,
                                 mode=mode, offsets=offsets)

    return torch.compile(_own_code(pool))


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    """Region pooling as shifted slices fused by torch.compile."""
    return _compiled_slice_pool(lp.region_offsets(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)


@torch.compiler.assume_constant_result
def _constant_offsets(pmatrix):
    """`region_offsets(pmatrix)`, a constant of the trace under torch.compile: dynamo would
    trace its NumPy as tensor operations, and its nonzero is data-dependent (a break)."""
    return lp.region_offsets(pmatrix)


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile (with opt-in, compiled)
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    """Max pooling of the regions as shifted slices (`ops.log_polar.pool_by_slices`)."""
    if opt_in_fast_paths():
        return log_polar_region_pool(x, pmatrix, kernel_size, strides, mode)
    return lp.pool_by_slices(x, pmatrix=None, kernel_size=kernel_size, strides=strides,
                             mode=mode, offsets=_constant_offsets(pmatrix))


def _platform():
    """"gpu" when Keras' torch backend computes on CUDA (it does whenever CUDA is there)."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def _traced(x):
    """True while torch.compile traces (fake tensors) or for a tensor on the meta device
    (Keras' symbolic shape inference): no concrete value exists."""
    return torch.compiler.is_compiling() or (isinstance(x, torch.Tensor) and x.device.type == "meta")


def _cross_process_sum(x):
    """`x` summed over the processes of the default group, differentiably (torch's
    `torch.distributed.nn.functional.all_reduce`: its backward all-reduces the gradient)."""
    from torch.distributed.nn import functional as distributed_functional  # noqa: PLC0415

    return distributed_functional.all_reduce(x)


QUERIES = {"platform": _platform, "traced": _traced, "cross_process_sum": _cross_process_sum}


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def constant(value, dtype, like):
    """`ops.core.constant`: `torch.as_tensor` on `like`'s device, which torch.compile traces
    (Keras' `convert_to_tensor` reads the array's dtype: a graph break). Eagerly, from a
    writable copy (the tables are read-only, which torch warns about)."""
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, keras.backend.standardize_dtype(dtype))
    if not torch.compiler.is_compiling():
        value = np.array(value)
    like = getattr(like, "value", like)  # a Keras variable: its torch tensor
    return torch.as_tensor(value, dtype=dtype, device=like.device)


@register_fast_path(FAST_PATHS, portable=True)  # not opt-in; torch.onnx traces it
def zero_pad(x, widths):
    """`torch.nn.functional.pad` (no Keras Operation per call: see `ops.core.zero_pad`)."""
    flat = [w for before_after in reversed(widths) for w in before_after]
    return torch.nn.functional.pad(keras.ops.convert_to_tensor(x), flat)


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def group_norm_relu(t, gamma, beta, groups, epsilon):
    """`ops.group.group_norm_relu` by `torch.nn.functional.group_norm` on the channels_last
    tensor viewed as (B, C, H, W) (torch's channels-last GroupNorm kernels: one pass for the
    statistics, one for the normalisation; a fused backward), then an in-place relu. E4's
    generator block, forward + backward (batch 8, 64 px, 8 groups of 4 channels, 2-core
    CPU): 14.6 → 4.4 ms against the reference's `keras.ops` passes in eager torch."""
    t, gamma, beta = (keras.ops.convert_to_tensor(a) for a in (t, gamma, beta))
    per = t.shape[-1] // groups
    weight, bias = (a.expand(groups, per).reshape(-1) for a in (gamma, beta))
    y = torch.nn.functional.group_norm(t.permute(0, 3, 1, 2), groups, weight, bias, epsilon)
    return torch.relu_(y).permute(0, 2, 3, 1)


def _addcmul(acc, a, b):
    """acc += a·b in place (a·b when acc is None): one fused pass, no temporary product."""
    return a * b if acc is None else acc.addcmul_(a, b)


class _ShiftAggregate(torch.autograd.Function):
    """Stride-1 E4 aggregation with in-place fused multiply-adds (`addcmul_`), forward and
    backward: one pass over the output per window position instead of a product, then a
    sum. The loops are `keras_convx.ops.group.forward_shifts` / `backward_shifts`."""

    @staticmethod
    def forward(ctx, v, kernels, k):
        ctx.save_for_backward(v, kernels)
        ctx.k = k
        return gops.forward_shifts(v, kernels, k, (1, 1), multiply_add=_addcmul)

    @staticmethod
    def backward(ctx, dy):
        v, kernels = ctx.saved_tensors
        dv, dk = gops.backward_shifts(v, kernels, dy, ctx.k, multiply_add=_addcmul)
        return dv, dk, None


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def e4_aggregate(v, kernels, k, strides):
    """E4 aggregation: the patch form on CUDA, the k² shifted multiply-adds elsewhere.

    Eager torch launches one kernel per shift (forward and backward): on an H100 the patch
    form's few large kernels are 1.3–1.6× faster per training step of the op
    (benchmarks/RESULTS_GPU.md), at the price of the k²-times larger patch tensor; on CPU
    the shifts are 3× faster, and at stride 1 they run as in-place fused multiply-adds
    (`_ShiftAggregate`). (torch.compile of this in-place shift loop measured 6× slower than
    eager on a 2-core CPU; the planar bands' opt-in compiled form writes the loop as one
    out-of-place expression, which inductor fuses.)
    """
    v, kernels = keras.ops.convert_to_tensor(v), keras.ops.convert_to_tensor(kernels)
    if v.is_cuda:
        return gops.aggregate_patches(v, kernels, k, strides)
    if tuple(strides) == (1, 1):
        return _ShiftAggregate.apply(v, kernels, k)
    return gops.aggregate_shifts(v, kernels, k, strides)


def _planar_kernels(fq, wt, rows, width, k):
    """The kernels of output rows `rows`, (B, k², A, rows, W'): `wt` (k²·A, F) @ `fq`'s columns,
    one batched product over the images (`torch.bmm` of the broadcast `wt`: 70 µs per image at
    64 px, 8 fields, against 280 µs for one `torch.mm` per image on a 2-core AVX-512 CPU)."""
    columns = slice(rows.start * width, rows.stop * width)
    band = product(wt, fq[:, :, columns])
    return band.view(fq.shape[0], k * k, wt.shape[0] // (k * k), len(rows), width)


def _band_aggregate(vq_band, kernels, k):
    """One stride-1 band's aggregation, Σ_s window_s(vq_band) · kernels[:, s], written as one
    expression of k² terms (torch.compile fuses them into one loop over the output).
    `vq_band`: the band's padded rows (B, M, A, rows + k - 1, W + k - 1)."""
    rows, width = kernels.shape[-2:]
    return functools.reduce(torch.add, (vq_band[:, :, :, ri, cj] * kernels[:, s, None]
                                        for s, ri, cj in windows(k, (1, 1), range(rows), width)))


def _band_aggregate_backward(vq_band, kernels, g, k):
    """The gradients of `_band_aggregate` for the cotangent `g` (B, M, A, rows, W): (dv over
    the band's padded rows, dkernels (B, k², A, rows, W)), each one expression."""
    rows, width = kernels.shape[-2:]
    placements = list(windows(k, (1, 1), range(rows), width))
    dkernels = torch.stack([(g * vq_band[:, :, :, ri, cj]).sum(1) for _, ri, cj in placements], 1)

    def placed(s):  # window s's product at its offset (i, j) = divmod(s, k) in the padded rows
        i, j = divmod(s, k)
        return torch.nn.functional.pad(g * kernels[:, s, None], (j, k - 1 - j, i, k - 1 - i))

    return functools.reduce(torch.add, (placed(s) for s, _, _ in placements)), dkernels


@functools.lru_cache(maxsize=128)
def _compiled_band(fn, *layouts):
    """`fn` compiled by torch.compile (inductor: C++ on the CPU) for its tensor arguments'
    `layouts` (static shapes): one compilation per function (forward, backward) and band
    layout (a full band and the last one, per image size, batch size and dtype)."""
    return torch.compile(_own_code(fn), dynamic=False)


def _run_compiled_band(fn, *args):
    """`fn(*args)` compiled for the tensors' shapes, strides and dtypes (what torch.compile
    guards on), so that no copy is compiled twice."""
    key = tuple((tuple(a.shape), a.stride(), a.dtype) for a in args if isinstance(a, torch.Tensor))
    return _compiled_band(fn, *key)(*args)


class _PlanarGenerateAggregate(torch.autograd.Function):
    """E4 kernel generation + aggregation on the CPU with the image axes innermost.

    In the layers' channels_last layout (B, H, W, M, A) a window position's kernel slice
    broadcasts over the M fields of each slot, so every multiply-add runs an inner loop of
    A (8 at 8 p4 fields, 2 slices) values; in (B, M, A, H, W) the inner loop runs along an
    image row and the kernel plane broadcasts over M as an outer axis. Measured on a 2-core
    CPU (batch 8, 8 p4 fields, 2 slices, k 5): the k² forward multiply-adds 4.6/28/95 ms →
    1.2/3.4/29 ms at 32/64/128 px, the kernel-gradient sums 3.6/16/213 → 1.5/4.7/60 ms. The
    kernels are generated in that layout (`block`ᵀ @ features) `rows` output rows at a
    time; with one band they are kept for the backward pass, with several each band's are
    dropped and regenerated there (neither all the kernels nor their cotangent exist).

    `compiled` (stride 1, opt-in): each band's k² multiply-adds run as one torch.compile'd
    expression (`_band_aggregate`, `_band_aggregate_backward`) instead of k² eager calls:
    forward 4.5 → 2.4 ms and backward 16.6 → 4.9 ms for all 64 rows of 64 px images at 8
    fields; the E4 layer's step at 8 fields (with torch's fused GroupNorm) 2.7–3.1× →
    2.0–2.4× a GroupConv2D's at 64 px (benchmarks/RESULTS.md, sixth pass)."""

    @staticmethod
    def forward(ctx, v, features, block, k, strides, rows, compiled):
        batch, height, width, fields, slots = v.shape
        (out_h, out_w), p = features.shape[1:3], (k - 1) // 2
        vq = torch.nn.functional.pad(v.permute(0, 3, 4, 1, 2), (p, p, p, p))  # (B, M, A, H+2p, W+2p)
        fq = features.permute(0, 3, 1, 2).reshape(batch, features.shape[3], out_h * out_w)
        wt = block.t()
        y = (v.new_empty if compiled else v.new_zeros)((batch, fields, slots, out_h, out_w))
        kept = None
        for r0 in range(0, out_h, rows):
            band = range(r0, min(out_h, r0 + rows))
            kernels = _planar_kernels(fq, wt, band, out_w, k)
            out = y[:, :, :, band.start:band.stop]
            if compiled:
                out.copy_(_run_compiled_band(_band_aggregate, vq[:, :, :, r0:band.stop + k - 1], kernels, k))
            else:
                aggregate_band(out, vq, kernels, k, strides, band)
            kept = kernels if rows >= out_h else None
        ctx.save_for_backward(vq, fq, block, kept)
        ctx.k, ctx.strides, ctx.rows, ctx.size = k, strides, rows, (height, width, out_h, out_w)
        ctx.compiled = compiled
        return y.permute(0, 3, 4, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        vq, fq, block, kept = ctx.saved_tensors
        k, strides, rows, (height, width, out_h, out_w) = ctx.k, ctx.strides, ctx.rows, ctx.size
        p, wt = (k - 1) // 2, block.t()
        dyq = dy.permute(0, 3, 4, 1, 2).contiguous()  # (B, M, A, H', W')
        dvq, dfq = torch.zeros_like(vq), torch.empty_like(fq)
        dblock = torch.zeros(block.shape, dtype=torch.float32, device=block.device)
        for r0 in range(0, out_h, rows):
            band = range(r0, min(out_h, r0 + rows))
            kernels = kept if kept is not None else _planar_kernels(fq, wt, band, out_w, k)
            g = dyq[:, :, :, band.start:band.stop]
            if ctx.compiled:
                dv_band, dkernels = _run_compiled_band(
                    _band_aggregate_backward, vq[:, :, :, r0:band.stop + k - 1], kernels, g, k)
                dvq[:, :, :, r0:band.stop + k - 1] += dv_band  # the halo rows overlap the next band's
            else:
                dkernels = aggregate_band_backward(dvq, vq, kernels, g, k, strides, band)
            columns = slice(band.start * out_w, band.stop * out_w)
            dkernels = dkernels.view(dkernels.shape[0], block.shape[1], len(band) * out_w)
            # into a fresh tensor, then copied: 0.61 against 0.94 ms with `out=` the strided slice
            dfq[:, :, columns] = product(block, dkernels)
            # the weight gradient summed over bands and images in float32 (one rounding)
            dblock += weight_gradient(fq[:, :, columns], dkernels.transpose(1, 2))
        dv = dvq[:, :, :, p:p + height, p:p + width].permute(0, 3, 4, 1, 2)
        dfeatures = dfq.view(*dfq.shape[:2], out_h, out_w).permute(0, 2, 3, 1)
        return dv, dfeatures, dblock.to(block.dtype), None, None, None, None


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def e4_generate_aggregate(v, features, block, k, strides):
    """E4 kernel generation + aggregation (where the whole layer is not fused, `e4_apply`:
    stride 2, reference steps): on the CPU in the image-axes-innermost layout,
    by bands of rows once the kernels pass 2 bands (`_PlanarGenerateAggregate`); otherwise (a
    GPU or other device, torch.compile tracing) the whole kernel tensor, then `e4_aggregate`."""
    v, features, block = (keras.ops.convert_to_tensor(t) for t in (v, features, block))
    if v.device.type != "cpu" or _traced(v):
        kernels = (features @ block).view(*features.shape[:3], k * k, block.shape[1] // (k * k))
        return e4_aggregate(v, kernels, k, strides)
    # Eager torch runs ~3·k² operator calls per band: its bands are 8× jax's (measured at
    # batch 8, 8 fields, k 5: 1 MiB bands 1.4-2.2× slower than 4 MiB ones at 64-128 px). The
    # compiled bands' too: 0.5 / 1 / 8 / 32 MiB 2.72 / 2.70 / 2.62 / 2.81× a GroupConv2D's step
    # at 64 px against 2.15-2.35× with 4 MiB (benchmarks/RESULTS.md, sixth pass).
    compiled = opt_in_fast_paths() and tuple(strides) == (1, 1)
    budget = 8 * gops.BAND_BYTES
    batch, height, width, _ = features.shape
    if batch * height * width * block.shape[-1] * block.element_size() <= 2 * budget:
        rows = height  # small enough to hold: one band, kept for the backward pass
    else:
        rows = gops.band_rows(batch, height, width, block.shape[-1], block.element_size(), budget)
    return _PlanarGenerateAggregate.apply(v, features, block, k, tuple(strides), rows, compiled)


def _in_compiled_call():
    """True while torch.compile traces or runs a compiled function, its graph-broken eager
    parts included: dynamo's frame callback is set there. No public query covers those parts
    (`torch.compiler.is_compiling()` is true while tracing only), hence torch's private one."""
    frames = getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None)
    query = getattr(frames, "get_eval_frame_callback", None)
    return torch.compiler.is_compiling() or (query is not None and query() is not None)


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def recompute(fn, x, variables):
    """`ops.core.recompute`: non-reentrant `torch.utils.checkpoint` of `fn` bound to its
    weights' values (`ops.core.bind_variables`: it saves them and `x`, and reruns `fn` when
    the backward pass reaches it). Not inside a torch.compile'd call (`jit_compile=True`),
    where `fn` runs as it is: there the rerun took other paths than the forward pass (the
    saved tensors no longer matched)."""
    if not torch.is_grad_enabled() or _traced(x) or _in_compiled_call():
        return fn(x)
    fn, values = bind_variables(fn, variables)
    return torch.utils.checkpoint.checkpoint(fn, x, *values, use_reentrant=False)


class _CompiledBands:
    """`_torch_e4.EagerBands` as torch.compile'd expressions (the opt-in fast paths)."""

    @staticmethod
    def forward(out, vq, kernels, k):
        out.copy_(_run_compiled_band(_band_aggregate, vq, kernels, k))

    @staticmethod
    def backward(vq, kernels, g, k):
        return _run_compiled_band(_band_aggregate_backward, vq, kernels, g, k)


# E4's whole layer by bands of 4 MiB of kernels (the planar bands'), at least 4 per image (fewer,
# larger bands at 32 px: 2.2× a GroupConv2D's memory; 4 bands 1.36× for +9% time)
FUSED_BAND_FACTOR = 8
FUSED_MIN_BANDS = 4


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile (its bands' compiled form is)
def e4_apply(x, reduce, gamma, beta, block, encoder, k, strides, epsilon):
    """E4's whole computation from its input: on the CPU at stride 1, one autograd Function by
    bands of rows that keeps only `x` and per-image statistics for the backward pass
    (`_torch_e4.fused_e4`); otherwise (a GPU, inside a torch.compile'd call, stride 2, an empty
    batch) the reference, step by step."""
    x, reduce, gamma, beta, block, encoder = (
        keras.ops.convert_to_tensor(t) for t in (x, reduce, gamma, beta, block, encoder))
    # not in a compiled call's graph-broken eager parts either: the backward pass of a Function
    # run there is traced by dynamo, which cannot loop over symbolic band bounds
    if (strides != 1 or x.device.type != "cpu" or _in_compiled_call() or _traced(x)
            or x.numel() == 0):
        return e4ops.e4_apply_reference(x, reduce, gamma, beta, block, encoder, k, strides, epsilon)
    if x.stride(1) != x.shape[2] * x.stride(2):  # the bands view the pixels as one axis
        x = x.contiguous()
    batch, height, width, _ = x.shape
    rows = gops.band_rows(batch, height, width, block.shape[-1], block.element_size(),
                          FUSED_BAND_FACTOR * gops.BAND_BYTES, FUSED_MIN_BANDS)
    bands = _CompiledBands if opt_in_fast_paths() else EagerBands
    return fused_e4(x, reduce, gamma, beta, block, encoder, k, float(epsilon), rows, bands)

