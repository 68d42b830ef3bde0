"""Fast paths for the torch backend, imported lazily by `keras_convx.ops.dispatcher` only.

The region-pooling path is torch.compile'd: about 2× faster than the dense path per training
step on CPU, but compiling costs tens of seconds per input shape, so it is opt-in
(`keras_convx.ops.set_opt_in_fast_paths(True)` or `KERAS_CONVX_OPT_IN=1`).

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import torch.
"""

import functools

import numpy as np
import torch

from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS, opt_in=True)


def offsets_key(pmatrix):
    pmatrix = np.asarray(pmatrix)
    cols = []
    for col in pmatrix.T:
        idx = np.flatnonzero(col)
        cols.append((tuple(idx.tolist()), tuple(col[idx].tolist())))
    return tuple(cols)


def _slice_pool(x, offsets, kernel_h, kernel_w, strides, mode):
    sh, sw = strides
    b, hp, wp, c = x.shape
    kh = kernel_h
    out_h = (hp - kh) // sh + 1
    out_w = (wp - kernel_w) // sw + 1
    outs = []
    for offs, weights in offsets:
        acc = None
        for q in offs:
            dy, dx = divmod(q, kernel_w)
            part = x[:, dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw, :]
            if acc is None:
                acc = part
            elif mode == "max":
                acc = torch.maximum(acc, part)
            else:
                acc = acc + part
        if acc is None:
            acc = x.new_zeros((b, out_h, out_w, c))
        elif mode != "max" and weights[0] != 1.0:
            acc = acc * weights[0]
        outs.append(acc)
    return torch.stack(outs, 3)


@functools.lru_cache(maxsize=128)
def _compiled(offsets, kernel_size, strides, mode):
    kh, kw = kernel_size
    return torch.compile(
        functools.partial(_slice_pool, offsets=offsets, kernel_h=kh, kernel_w=kw, strides=strides, mode=mode),
    )


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    return _compiled(offsets_key(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return _compiled(offsets_key(pmatrix), tuple(kernel_size), tuple(strides), mode)(x)
