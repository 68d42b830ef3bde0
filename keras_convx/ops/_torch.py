"""Fast paths for the torch backend, imported lazily by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import torch.

The region-pooling path is torch.compile'd. Per training step of a 9×9 (2,6,3) layer it
measured 1.7× faster than the dense path at 64→64 channels on an AVX2 2-core CPU, but 1.4×
slower at 64 and 1.3× faster at 128 channels on an AVX-512 one (whose convolutions are ~4×
faster; the cost model's POOL_COST covers both), and compiling costs seconds to tens of seconds
per input shape, so it is opt-in (`keras_convx.ops.set_opt_in_fast_paths(True)` or
`KERAS_CONVX_OPT_IN=1`). The E4 aggregation's device choice is not opt-in.
"""

import functools

import keras
import torch

from keras_convx.ops import group as gops
from keras_convx.ops import log_polar as lp
from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS, opt_in=True)


@functools.lru_cache(maxsize=128)
def _compiled_slice_pool(offsets, kernel_size, strides, mode):
    return torch.compile(functools.partial(lp.pool_by_slices, pmatrix=None, kernel_size=kernel_size,
                                           strides=strides, mode=mode, offsets=offsets))


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    """Region pooling as shifted slices fused by torch.compile."""
    return _compiled_slice_pool(lp.region_offsets(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return log_polar_region_pool(x, pmatrix, kernel_size, strides, mode)


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


@register_fast_path(FAST_PATHS, portable=True)  # not opt-in; torch.onnx traces it
def zero_pad(x, widths):
    """`torch.nn.functional.pad` (no Keras Operation per call: see `ops.core.zero_pad`)."""
    flat = [w for before_after in reversed(widths) for w in before_after]
    return torch.nn.functional.pad(keras.ops.convert_to_tensor(x), flat)


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
    (`_ShiftAggregate`). (torch.compile of the shift loop measured 6× slower than eager on a
    2-core CPU, so no compiled form.)
    """
    v, kernels = keras.ops.convert_to_tensor(v), keras.ops.convert_to_tensor(kernels)
    if v.is_cuda:
        return gops.aggregate_patches(v, kernels, k, strides)
    if tuple(strides) == (1, 1):
        return _ShiftAggregate.apply(v, kernels, k)
    return gops.aggregate_shifts(v, kernels, k, strides)


def _band_kernels(features, block, r0, r1, k):
    f = features[:, r0:r1]
    return f, (f @ block).view(*f.shape[:3], k * k, -1)


class _TiledGenerateAggregate(torch.autograd.Function):
    """Stride-1 E4 kernel generation + aggregation, `rows` output rows at a time: a band's
    kernels are generated, used with in-place multiply-adds and dropped; the backward pass
    regenerates them band by band. Neither all the kernels nor their cotangent exist."""

    @staticmethod
    def forward(ctx, v, features, block, k, rows):
        ctx.save_for_backward(v, features, block)
        ctx.k, ctx.rows = k, rows
        p, (height, width) = (k - 1) // 2, features.shape[1:3]
        vp = torch.nn.functional.pad(v, (0, 0, 0, 0, p, p, p, p))
        y = v.new_zeros(v.shape)
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            _, kernels = _band_kernels(features, block, r0, r1, k)
            out = y[:, r0:r1]
            for i in range(k):
                for j in range(k):
                    out.addcmul_(vp[:, r0 + i:r1 + i, j:j + width], kernels[:, :, :, i * k + j, None])
        return y

    @staticmethod
    def backward(ctx, dy):
        v, features, block = ctx.saved_tensors
        k, rows = ctx.k, ctx.rows
        p, (height, width) = (k - 1) // 2, features.shape[1:3]
        vp = torch.nn.functional.pad(v, (0, 0, 0, 0, p, p, p, p))
        dvp, dfeatures = torch.zeros_like(vp), torch.empty_like(features)
        dblock = torch.zeros(block.shape, dtype=torch.float32, device=block.device)
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            f, kernels = _band_kernels(features, block, r0, r1, k)
            g, dkernels = dy[:, r0:r1], torch.empty_like(kernels)
            for i in range(k):
                for j in range(k):
                    s = i * k + j
                    dvp[:, r0 + i:r1 + i, j:j + width].addcmul_(g, kernels[:, :, :, s, None])
                    torch.sum(g * vp[:, r0 + i:r1 + i, j:j + width], dim=3,
                              out=dkernels[:, :, :, s])
            dkernels = dkernels.view(*f.shape[:3], -1)
            dfeatures[:, r0:r1] = dkernels @ block.T
            # the weight gradient summed over bands in float32 (one rounding at the end)
            dblock.add_(f.reshape(-1, f.shape[-1]).T.float()
                        @ dkernels.reshape(-1, dkernels.shape[-1]).float())
        return (dvp[:, p:p + height, p:p + width], dfeatures, dblock.to(block.dtype), None,
                None)


@register_fast_path(FAST_PATHS)  # not opt-in: nothing to compile
def e4_generate_aggregate(v, features, block, k, strides):
    """E4 kernel generation + aggregation: on the CPU at stride 1 by bands of rows with the
    kernels regenerated in the backward pass (`_TiledGenerateAggregate`); otherwise (a GPU or
    other device, stride > 1, torch.compile tracing) the whole kernel tensor, then `e4_aggregate`."""
    v, features, block = (keras.ops.convert_to_tensor(t) for t in (v, features, block))
    if v.device.type != "cpu" or tuple(strides) != (1, 1) or _traced(v):
        kernels = (features @ block).view(*features.shape[:3], k * k, -1)
        return e4_aggregate(v, kernels, k, strides)
    # Eager torch runs ~3·k² operator calls per band: its bands are 8× jax's (measured at
    # batch 8, 8 fields, k 5: 1 MiB bands 1.4-2.2× slower than 4 MiB ones at 64-128 px).
    budget = 8 * gops.BAND_BYTES
    batch, height, width, _ = features.shape
    if batch * height * width * block.shape[-1] * block.element_size() <= 2 * budget:
        # small enough to hold: one band, and no regeneration in the backward pass
        kernels = (features @ block).view(*features.shape[:3], k * k, -1)
        return e4_aggregate(v, kernels, k, strides)
    rows = gops.band_rows(batch, height, width, block.shape[-1], block.element_size(), budget)
    return _TiledGenerateAggregate.apply(v, features, block, k, rows)
