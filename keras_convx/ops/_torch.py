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


QUERIES = {"platform": _platform}


def _pad_hw(t, p):
    """Zero-pads the two spatial axes of a (B, H, W, M, A) tensor by p on each side."""
    return torch.nn.functional.pad(t, (0, 0, 0, 0, p, p, p, p))


class _ShiftAggregate(torch.autograd.Function):
    """Stride-1 E4 aggregation with in-place fused multiply-adds (`addcmul_`), forward and
    backward: one pass over the output per window position instead of a product, then a
    sum. Same maths as `keras_convx.ops.group.aggregate_shifts` and its written gradient."""

    @staticmethod
    def forward(ctx, v, kernels, k):
        ctx.save_for_backward(v, kernels)
        ctx.k = k
        h, w = kernels.shape[1:3]
        vp = _pad_hw(v, (k - 1) // 2)
        out = None
        for i in range(k):
            for j in range(k):
                window, weight = vp[:, i : i + h, j : j + w], kernels[:, :, :, i * k + j : i * k + j + 1]
                out = window * weight if out is None else out.addcmul_(window, weight)
        return out

    @staticmethod
    def backward(ctx, dy):
        v, kernels = ctx.saved_tensors
        k, p = ctx.k, (ctx.k - 1) // 2
        h, w = dy.shape[1:3]
        dv = dk = None
        if ctx.needs_input_grad[0]:
            # dv[z] = Σ_s kernels[z − δ_s, s] · dy[z − δ_s]
            dyp, kp = _pad_hw(dy, p), _pad_hw(kernels, p)
            for i in range(k):
                for j in range(k):
                    a, b, s = 2 * p - i, 2 * p - j, i * k + j
                    g, weight = dyp[:, a : a + h, b : b + w], kp[:, a : a + h, b : b + w, s : s + 1]
                    dv = g * weight if dv is None else dv.addcmul_(g, weight)
        if ctx.needs_input_grad[1]:
            # dkernels[x, s] = Σ_m dy[x, m] · v[x + δ_s, m]
            vp = _pad_hw(v, p)
            dk = torch.empty_like(kernels)
            for i in range(k):
                for j in range(k):
                    dk[:, :, :, i * k + j] = (dy * vp[:, i : i + h, j : j + w]).sum(dim=3)
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
