"""Fast paths for the jax backend, imported lazily by `keras_convx.ops.dispatcher` only.

Each function here has the signature of the reference op it replaces and is registered
under that op's name. This is the only module allowed to import jax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from keras_convx.ops.dispatcher import register_fast_path

FAST_PATHS = {}
fast = register_fast_path(FAST_PATHS)


@functools.lru_cache(maxsize=128)
def _slice_pool_fn(offsets, kernel_w, strides, mode):
    """A jitted function pooling every region by shifted strided slices (fused by XLA)."""
    sh, sw = strides

    def pool(x):
        b, hp, wp, c = x.shape
        kh = max((q // kernel_w for offs, _ in offsets for q in offs), default=0) + 1
        out_h = (hp - kh) // sh + 1
        out_w = (wp - kernel_w) // sw + 1
        outs = []
        for offs, weights in offsets:
            acc = None
            for q in offs:
                dy, dx = divmod(q, kernel_w)
                part = jax.lax.slice(
                    x, (0, dy, dx, 0), (b, dy + sh * (out_h - 1) + 1, dx + sw * (out_w - 1) + 1, c),
                    (1, sh, sw, 1),
                )
                if acc is None:
                    acc = part
                elif mode == "max":
                    acc = jnp.maximum(acc, part)
                else:
                    acc = acc + part
            if acc is None:
                acc = jnp.zeros((b, out_h, out_w, c), x.dtype)
            elif mode != "max" and weights[0] != 1.0:
                acc = acc * jnp.asarray(weights[0], x.dtype)
            outs.append(acc)
        return jnp.stack(outs, 3)

    return jax.jit(pool)


def _offsets_key(pmatrix):
    pmatrix = np.asarray(pmatrix)
    cols = []
    for col in pmatrix.T:
        idx = np.flatnonzero(col)
        cols.append((tuple(idx.tolist()), tuple(col[idx].tolist())))
    return tuple(cols)


@fast
def log_polar_region_pool(x, pmatrix, kernel_size, strides, mode):
    return _slice_pool_fn(_offsets_key(pmatrix), kernel_size[1], tuple(strides), mode)(x)


@fast
def log_polar_region_max(x, pmatrix, kernel_size, strides, mode):
    return _slice_pool_fn(_offsets_key(pmatrix), kernel_size[1], tuple(strides), mode)(x)
