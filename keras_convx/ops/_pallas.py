"""Pallas kernels for the jax backend's GPU fast paths (imported by `keras_convx.ops._jax` only).

Opt-in on a GPU (`keras_convx.ops.set_opt_in_fast_paths(True)`): on an H100 at the benchmark
sizes both kernels were correct but no faster than XLA's own fusions, which stay the default
(benchmarks/RESULTS_GPU.md, `benchmarks/gpu_pallas.py`).

`pool_mix_fn`: log-polar region pooling fused with the 1×1 mixing of path B. A region-structured
convolution is `y[p] = Σ_r (Σ_{q ∈ Ω_r} w_r x[p + q]) · W_r`; the kernel computes, per output
row and column tile, each region's pooled tile in registers and multiplies it straight into
the output tile, so the R'-times larger pooled tensor is never written (path B writes it in
the forward pass and its cotangent in the backward pass).

The input gradient of such a layer is the same kind of product: the cotangent, padded by
k − 1, pooled over the point-reflected regions and mixed with the transposed weights
(`dx[u] = Σ_t dy[u − t]·K[t]ᵀ`, and K is constant on each region). So one kernel serves the
forward pass and the input gradient. The weight gradient `dW_r = Σ_p pooled_r[p]ᵀ dy[p]` is a
reduction over every pixel; it is left to XLA (the pooled maps are recomputed by the jitted
slice pooling and contracted with the cotangent in one GEMM).

Layout: channels_last, stride 1, valid windows over an input already padded by the caller.
Triton (Pallas' GPU lowering) needs power-of-two tile shapes and at least 16 along every dot
dimension, so channels and the column tile are padded here (zeros) and the result sliced.
`aggregate_fn`: the E4 aggregation (below). Without a GPU, `_jax.PALLAS_ON_CPU = True` runs
both in Pallas' interpreter (`interpret=True`; slow, for tests of this code path).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from keras_convx.ops import log_polar as lp

MIN_DOT = 16  # smallest tile side of a Triton dot
# Launch settings (read when a kernel is built; the builders are cached, so clear
# `pool_mix_fn` / `aggregate_fn` caches after changing them).
TUNING = {"num_warps": 4, "max_col_tile": 64}


def _pallas_call(kernel, out_shape, grid, interpret, name):
    # The Triton lowering, named explicitly (newer jax may default to another GPU backend).
    params = None if interpret else pltriton.CompilerParams(num_warps=TUNING["num_warps"])
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, interpret=interpret, name=name,
                          compiler_params=params)


def _pow2(n, minimum=MIN_DOT):
    return max(minimum, 1 << (int(n) - 1).bit_length())


def region_taps(offsets, kernel_size, flip=False):
    """((tap rows and columns of region r), weight of region r) for the non-empty regions.

    `offsets` is `log_polar.region_offsets(pmatrix)`: per region, flat window offsets and
    their (equal) weights. With `flip`, every offset is point-reflected (q → k − 1 − q), which
    turns the forward pooling into the pooling the input gradient reads.
    """
    kh, kw = kernel_size
    out = []
    for r, (flat, weights) in enumerate(offsets):
        if not flat:
            continue
        taps = []
        for q in flat:
            qy, qx = divmod(q, kw)
            taps.append((kh - 1 - qy, kw - 1 - qx) if flip else (qy, qx))
        out.append((r, tuple(taps), float(weights[0])))
    return tuple(out)


def _kernel(x_ref, w_ref, o_ref, *, regions, col_tile):
    b = pl.program_id(0)
    row = pl.program_id(1)
    col0 = pl.program_id(2) * col_tile
    acc = jnp.zeros((col_tile, o_ref.shape[-1]), jnp.float32)
    for slot, (_, taps, _) in enumerate(regions):
        pooled = None
        for qy, qx in taps:
            part = x_ref[b, row + qy, pl.ds(col0 + qx, col_tile), :].astype(jnp.float32)
            pooled = part if pooled is None else pooled + part
        acc += jnp.dot(pooled.astype(w_ref.dtype), w_ref[slot], preferred_element_type=jnp.float32)
    o_ref[b, row, pl.ds(col0, col_tile), :] = acc.astype(o_ref.dtype)


def _padded_call(xp, w, regions, kernel_size, rows_out, cols_out, interpret):
    """y (B, rows_out, cols_out, N) = Σ_slots (Σ_taps xp[:, i+qy, j+qx, :]) @ w[slot].

    xp: (B, ≥ rows_out + k_h − 1, ≥ cols_out + k_w − 1, C); w: (slots, C, N), already scaled.
    """
    kh, kw = kernel_size
    batch, _, _, channels = xp.shape
    n_out = w.shape[-1]
    col_tile = min(_pow2(cols_out), TUNING["max_col_tile"])
    col_tiles = -(-cols_out // col_tile)
    cp, np_ = _pow2(channels), _pow2(n_out)
    xp = xp[:, : rows_out + kh - 1, : col_tiles * col_tile + kw - 1]
    xp = jnp.pad(xp, ((0, 0), (0, 0), (0, col_tiles * col_tile + kw - 1 - xp.shape[2]), (0, cp - channels)))
    w = jnp.pad(w, ((0, 0), (0, cp - channels), (0, np_ - n_out)))
    y = _pallas_call(
        functools.partial(_kernel, regions=regions, col_tile=col_tile),
        jax.ShapeDtypeStruct((batch, rows_out, col_tiles * col_tile, np_), xp.dtype),
        (batch, rows_out, col_tiles), interpret, "log_polar_pool_mix",
    )(xp, w)
    return y[:, :, :cols_out, :n_out]


def _slot_weights(w, regions, transpose=False):
    """Stack the weights of the non-empty regions, each scaled by its pooling weight."""
    scale = np.array([weight for _, _, weight in regions], np.float32).reshape(-1, 1, 1)
    picked = w[np.array([r for r, _, _ in regions])] * scale.astype(w.dtype)
    return jnp.swapaxes(picked, 1, 2) if transpose else picked


@functools.lru_cache(maxsize=64)
def pool_mix_fn(offsets, kernel_size, interpret):
    """The fused op for one region configuration: f(xp, w) with its custom gradient.

    f(xp, w): xp (B, H_pad, W_pad, C) padded channels_last input, w (R', C, N) mixing weights
    (region-major, centre last); returns (B, H_pad − k_h + 1, W_pad − k_w + 1, N).
    """
    kh, kw = kernel_size
    forward = region_taps(offsets, kernel_size)
    flipped = region_taps(offsets, kernel_size, flip=True)

    @jax.custom_vjp
    def f(xp, w):
        rows, cols = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
        return _padded_call(xp, _slot_weights(w, forward), forward, kernel_size, rows, cols, interpret)

    def f_fwd(xp, w):
        return f(xp, w), (xp, w)

    def f_bwd(res, dy):
        xp, w = res
        dyp = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
        dx = _padded_call(dyp, _slot_weights(w, flipped, transpose=True), flipped, kernel_size,
                          xp.shape[1], xp.shape[2], interpret)
        pooled = lp.pool_by_slices(xp, None, kernel_size, (1, 1), "sum", offsets=offsets)
        dw = jnp.einsum("bhwrc,bhwn->rcn", pooled, dy, preferred_element_type=jnp.float32)
        return dx.astype(xp.dtype), dw.astype(w.dtype)

    f.defvjp(f_fwd, f_bwd)
    return jax.jit(f)


# ---------------------------------------------------------------------------------------------
# E4 aggregation: y[x, m, a] = Σ_t kernels[x, t, a] · v[x·s + δ_t, m, a]
# ---------------------------------------------------------------------------------------------
#
# Strided windows are read from a phase split of the padded input (`_phases`: phase (py, px)
# holds rows py, py + s, … and columns px, px + s, …), so tap (i, j) of output x is the
# contiguous tile at (x + i // s, x + j // s) of phase (i % s, j % s). Three kernels, one
# (batch, output row, column tile) per program: the forward product, the kernels' gradient
# (one tile per tap) and the input's gradient (computed per phase of the padded input, from
# the taps of that phase).


def _col_tiles(cols):
    tile = min(_pow2(cols, 1), TUNING["max_col_tile"])
    return tile, -(-cols // tile)


def _phases(vp, strides, rows, cols):
    """(B, sh, sw, rows, cols, ...) phase split of a padded (B, H, W, ...) tensor."""
    sh, sw = strides
    batch, h, w = vp.shape[:3]
    tail = vp.shape[3:]
    vp = jnp.pad(vp, ((0, 0), (0, sh * rows - h), (0, sw * cols - w)) + ((0, 0),) * len(tail))
    vp = vp.reshape(batch, rows, sh, cols, sw, *tail)
    return jnp.moveaxis(vp, (2, 4), (1, 2))


def _agg_forward_kernel(v_ref, k_ref, o_ref, *, k, strides, col_tile):
    b, row = pl.program_id(0), pl.program_id(1)
    col0 = pl.program_id(2) * col_tile
    sh, sw = strides
    acc = jnp.zeros((col_tile,) + o_ref.shape[-2:], jnp.float32)
    for i in range(k):
        for j in range(k):
            window = v_ref[b, i % sh, j % sw, row + i // sh, pl.ds(col0 + j // sw, col_tile), :, :]
            weight = k_ref[b, row, pl.ds(col0, col_tile), i * k + j, :]
            acc += window.astype(jnp.float32) * weight.astype(jnp.float32)[:, None, :]
    o_ref[b, row, pl.ds(col0, col_tile), :, :] = acc.astype(o_ref.dtype)


def _agg_kernels_grad_kernel(v_ref, dy_ref, dk_ref, *, k, strides, col_tile):
    b, row = pl.program_id(0), pl.program_id(1)
    col0 = pl.program_id(2) * col_tile
    sh, sw = strides
    dy = dy_ref[b, row, pl.ds(col0, col_tile), :, :].astype(jnp.float32)
    for i in range(k):
        for j in range(k):
            window = v_ref[b, i % sh, j % sw, row + i // sh, pl.ds(col0 + j // sw, col_tile), :, :]
            dk = jnp.sum(window.astype(jnp.float32) * dy, axis=1)
            dk_ref[b, row, pl.ds(col0, col_tile), i * k + j, :] = dk.astype(dk_ref.dtype)


def _agg_input_grad_kernel(dy_ref, k_ref, dv_ref, *, k, strides, col_tile, reach):
    # dv at padded position (s·r + py, s·c + px) gathers the outputs x = (r − i//s, c − j//s)
    # of the taps (i, j) ≡ (py, px) mod s; dy and kernels are front-padded by `reach`.
    b, row = pl.program_id(0), pl.program_id(1)
    col0 = pl.program_id(2) * col_tile
    sh, sw = strides
    for py in range(sh):
        for px in range(sw):
            acc = jnp.zeros((col_tile,) + dv_ref.shape[-2:], jnp.float32)
            for i in range(py, k, sh):
                for j in range(px, k, sw):
                    r, c = row + reach[0] - i // sh, col0 + reach[1] - j // sw
                    dy = dy_ref[b, r, pl.ds(c, col_tile), :, :]
                    weight = k_ref[b, r, pl.ds(c, col_tile), i * k + j, :]
                    acc += dy.astype(jnp.float32) * weight.astype(jnp.float32)[:, None, :]
            dv_ref[b, py, px, row, pl.ds(col0, col_tile), :, :] = acc.astype(dv_ref.dtype)


def _pad_to(x, shape):
    return jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, shape)])


@functools.lru_cache(maxsize=64)
def aggregate_fn(k, strides, interpret):
    """E4 aggregation (`keras_convx.ops.group.aggregate_patches`' contract) as Pallas kernels,
    with its gradient: f(v (B, H, W, M, A), kernels (B, H', W', k², A)) -> (B, H', W', M, A)."""
    sh, sw = strides
    p = (k - 1) // 2
    reach = ((k - 1) // sh, (k - 1) // sw)

    def layout(v, kernels):
        batch, h, w, m, a = v.shape
        oh, ow = kernels.shape[1:3]
        tile, tiles = _col_tiles(ow)
        mp, ap = _pow2(m, 1), _pow2(a, 1)
        rows, cols = oh + reach[0], tiles * tile + reach[1]
        return batch, (h, w, m, a), (oh, ow), tile, tiles, mp, ap, rows, cols

    def call(kernel, args, out_shape, grid, **params):
        return _pallas_call(functools.partial(kernel, k=k, strides=(sh, sw), **params),
                            out_shape, grid, interpret, "e4_aggregate")(*args)

    def padded_inputs(v, kernels):
        batch, (h, w, m, a), (oh, ow), tile, tiles, mp, ap, rows, cols = layout(v, kernels)
        vp = jnp.pad(v, ((0, 0), (p, p), (p, p), (0, mp - m), (0, ap - a)))
        vph = _phases(vp[:, : sh * rows, : sw * cols], (sh, sw), rows, cols)
        kp = _pad_to(kernels, (batch, oh, tiles * tile, k * k, ap))
        return vph, kp

    @jax.custom_vjp
    def f(v, kernels):
        batch, (h, w, m, a), (oh, ow), tile, tiles, mp, ap, _, _ = layout(v, kernels)
        vph, kp = padded_inputs(v, kernels)
        y = call(_agg_forward_kernel, (vph, kp),
                 jax.ShapeDtypeStruct((batch, oh, tiles * tile, mp, ap), v.dtype),
                 (batch, oh, tiles), col_tile=tile)
        return y[:, :, :ow, :m, :a]

    def f_fwd(v, kernels):
        return f(v, kernels), (v, kernels)

    def f_bwd(res, dy):
        v, kernels = res
        batch, (h, w, m, a), (oh, ow), tile, tiles, mp, ap, _, _ = layout(v, kernels)
        vph, _ = padded_inputs(v, kernels)
        dyp = _pad_to(dy, (batch, oh, tiles * tile, mp, ap))
        dk = call(_agg_kernels_grad_kernel, (vph, dyp),
                  jax.ShapeDtypeStruct((batch, oh, tiles * tile, k * k, ap), kernels.dtype),
                  (batch, oh, tiles), col_tile=tile)[:, :, :ow, :, :a]
        # input gradient, per phase of the padded input: rows/cols of phase space to cover
        ph_rows, ph_cols = -(-(h + 2 * p) // sh), -(-(w + 2 * p) // sw)
        dtile, dtiles = _col_tiles(ph_cols)
        front = ((0, 0), (reach[0], ph_rows - oh), (reach[1], dtiles * dtile - ow))
        dyf = jnp.pad(dy, front + ((0, mp - m), (0, ap - a)))
        kf = jnp.pad(kernels, front + ((0, 0), (0, ap - a)))
        dvph = call(_agg_input_grad_kernel, (dyf, kf),
                    jax.ShapeDtypeStruct((batch, sh, sw, ph_rows, dtiles * dtile, mp, ap), v.dtype),
                    (batch, ph_rows, dtiles), col_tile=dtile, reach=reach)
        dvp = jnp.moveaxis(dvph, (1, 2), (2, 4)).reshape(batch, ph_rows * sh, dtiles * dtile * sw, mp, ap)
        return dvp[:, p : p + h, p : p + w, :m, :a], dk

    f.defvjp(f_fwd, f_bwd)
    return jax.jit(f)
