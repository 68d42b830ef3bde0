"""Analytic vector-Jacobian products (VJPs) of the linear oracles, float64 NumPy.

Each VJP is the adjoint of its oracle's forward, statement by statement (a forward
`y += window @ w` gives `dwindow += dy @ wᵀ` and `dw += windowᵀ dy`), so it is as independent
of keras_convx as the forward. `assert_matches_oracle` uses an oracle's `vjp` attribute instead
of finite differences: one pass instead of two oracle calls per differenced coordinate, and
every coordinate checked, not a random sample. `tests/test_oracles.py` checks each VJP against
central differences of its own forward.

`oracle.vjp(x, weights, cotangent) -> (dx, {weight name: dweight})`.
"""

import numpy as np

from tests.oracles import group as group_oracle
from tests.oracles import group_any
from tests.oracles import log_polar as lp_oracle
from tests.oracles import synaptic as syn_oracle
from tests.oracles.shared_basis import same_padding


def correlate_vjp(x, w, cotangent, strides=(1, 1), padding="same"):
    """(dx, dw) of `sum(cotangent · correlate(x, w))`, channels_last x (B, H, W, Ci), w (k_h,
    k_w, Ci, Co), Keras' "same"/"valid" padding: the adjoint of the oracles' tap loop."""
    kh, kw = w.shape[:2]
    sh, sw = (strides, strides) if np.isscalar(strides) else strides
    h, w_ = x.shape[1:3]
    pads = ((0, 0), (0, 0))
    if padding == "same":
        pads = (same_padding(h, kh, sh), same_padding(w_, kw, sw))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = cotangent.shape[1:3]
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w, dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (oh - 1) + 1, sh)
            cols = slice(j, j + sw * (ow - 1) + 1, sw)
            dw[i, j] = np.einsum("bhwc,bhwo->co", xp[:, rows, cols], cotangent)
            dxp[:, rows, cols] += cotangent @ w[i, j].T
    return dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w_], dw


def selection_vjp(dense_fn, w, d_dense):
    """dw of a map `dense_fn` that only MOVES entries of w (rotations, mirrors, channel
    permutations, copies): each dense entry's source is found by mapping the entries' own
    indices, and the cotangents of all copies of an entry are summed."""
    source = dense_fn(np.arange(w.size, dtype=np.float64).reshape(w.shape)).astype(np.int64)
    return np.bincount(source.reshape(-1), weights=d_dense.reshape(-1),
                       minlength=w.size).reshape(w.shape)


# -- group convolutions ----------------------------------------------------------------------


def group_conv_vjp(x, weights, cotangent, group, lifting, strides=(1, 1), padding="same"):
    """VJP of `group_oracle.lift_conv` (lifting=True) or `group_conv`, channels_last."""
    dense_of = group_oracle.lift_dense if lifting else group_oracle.group_dense
    dense = dense_of(weights["kernel"], group)
    dx, d_dense = correlate_vjp(x, dense, cotangent, strides, padding)
    if group in group_oracle.SPEC_GROUPS:
        grads = {"kernel": selection_vjp(lambda w: dense_of(w, group), weights["kernel"], d_dense)}
    else:  # rotations off the 90° grid mix entries: the transposed linear maps
        grads = {"kernel": group_any.dense_vjp(d_dense, weights["kernel"].shape, group, lifting)}
    if "bias" in weights:  # y += repeat(bias, |G|)
        n = group_oracle.order(group)
        grads["bias"] = cotangent.sum(axis=(0, 1, 2)).reshape(-1, n).sum(axis=1)
    return dx, grads


# -- synaptic strength -----------------------------------------------------------------------


def synaptic_conv_vjp(x, direction, strength, mask, bias, cotangent, *, stride=1,
                      padding="valid", groups=1, dilation=1, epsilon=1e-12):
    """VJP of `syn_oracle.synaptic_conv`: (dx, {"direction", "strength"[, "bias"]})."""
    k = syn_oracle.kernel(direction, strength, mask, epsilon)
    w = syn_oracle.dilate(k, dilation)
    cin_g, cout = w.shape[2], w.shape[3]
    cout_g = cout // groups
    dx = np.zeros_like(x, dtype=np.float64)
    dw = np.zeros_like(w)
    for g in range(groups):
        cs, os_ = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        dx[..., cs], dw[..., os_] = correlate_vjp(x[..., cs], w[..., os_], cotangent[..., os_],
                                                  (stride, stride), padding)
    dk = dw[::dilation, ::dilation]  # the adjoint of dilate: taps back, the zeros dropped
    # k = V · (m·s / n),  n = sqrt(Σ V² + ε) per slice
    norm = np.sqrt(np.sum(direction**2, axis=(0, 1)) + epsilon)
    scale = strength if mask is None else strength * mask
    dot = np.sum(dk * direction, axis=(0, 1))
    grads = {
        "direction": dk * (scale / norm) - direction * (dot * scale / norm**3),
        "strength": dot / norm * (1.0 if mask is None else mask),
    }
    if bias is not None:
        grads["bias"] = cotangent.sum(axis=(0, 1, 2))
    return dx, grads


# -- log-polar space convolution -------------------------------------------------------------


def pooled_regions_vjp(x_shape, d_pooled, d_centre, kernel_size, rings, sectors, growth_rate,
                       initial_angle=0.0, strides=1, padding="same", pooling="mean"):
    """dx of `lp_oracle.pooled_regions` (mean or sum pooling) for the cotangents of its two
    outputs: each region's cotangent goes back to its member taps (÷ |region| for a mean)."""
    if pooling not in ("mean", "sum"):
        raise ValueError("max pooling has no linear adjoint; use finite differences")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    ring, sector = lp_oracle.regions((kh, kw), rings, sectors, growth_rate, initial_angle)
    b, h, w, c = x_shape
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    if padding == "same":
        dxp = np.zeros((b, h + kh - 1, w + kw - 1, c))
    else:
        dxp = np.zeros(x_shape)
    ho, wo = d_pooled.shape[1:3]
    for l in range(rings):
        for a in range(sectors):
            members = [(i, j) for i in range(kh) for j in range(kw)
                       if ring[i, j] == l and sector[i, j] == a]
            for i, j in members:
                share = 1.0 / len(members) if pooling == "mean" else 1.0
                dxp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] += (
                    d_pooled[..., l, a] * share)
    dxp[:, cy:cy + sh * (ho - 1) + 1:sh, cx:cx + sw * (wo - 1) + 1:sw, :] += d_centre
    return dxp[:, cy:cy + h, cx:cx + w] if padding == "same" else dxp


def lpsc_vjp(x, weights, cotangent, *, kernel_size, rings, sectors, growth_rate,
             initial_angle=0.0, strides=1, padding="same", pooling="mean", groups=1,
             data_format="channels_last"):
    """VJP of `lp_oracle.lpsc` (mean/sum pooling), same arguments plus the cotangent."""
    if data_format == "channels_first":
        x, cotangent = np.moveaxis(x, 1, -1), np.moveaxis(cotangent, 1, -1)
    geometry = dict(kernel_size=kernel_size, rings=rings, sectors=sectors,
                    growth_rate=growth_rate, initial_angle=initial_angle, strides=strides,
                    padding=padding, pooling=pooling)
    pooled, centre = lp_oracle.pooled_regions(x, **geometry)
    kernel = weights["kernel"]
    cin_g, out = kernel.shape[2], kernel.shape[3]
    out_g = out // groups
    d_pooled, d_centre = np.zeros_like(pooled), np.zeros_like(centre)
    grads = {"kernel": np.zeros_like(kernel, dtype=np.float64)}
    if "center_kernel" in weights:
        grads["center_kernel"] = np.zeros_like(weights["center_kernel"], dtype=np.float64)
    for g in range(groups):
        cs, os_ = slice(g * cin_g, (g + 1) * cin_g), slice(g * out_g, (g + 1) * out_g)
        dy = cotangent[..., os_]
        # y = einsum("bhwcla,laco->bhwo", pooled, W) [+ einsum("bhwc,co->bhwo", centre, w0)]
        grads["kernel"][..., os_] = np.einsum("bhwcla,bhwo->laco", pooled[..., cs, :, :], dy)
        d_pooled[..., cs, :, :] = np.einsum("bhwo,laco->bhwcla", dy, kernel[..., os_])
        if "center_kernel" in weights:
            grads["center_kernel"][:, os_] = np.einsum("bhwc,bhwo->co", centre[..., cs], dy)
            d_centre[..., cs] = dy @ weights["center_kernel"][:, os_].T
    if "bias" in weights:
        grads["bias"] = cotangent.sum(axis=(0, 1, 2))
    dx = pooled_regions_vjp(x.shape, d_pooled, d_centre, **geometry)
    if data_format == "channels_first":
        dx = np.moveaxis(dx, -1, 1)
    return dx, grads


def with_vjp(forward, vjp):
    """`forward` with the `vjp` attribute `assert_matches_oracle` looks for."""
    forward.vjp = vjp
    return forward


def channels_first(oracle):
    """A channels_last oracle (with or without `vjp`) as a channels_first one."""
    def forward(x, weights):
        return np.moveaxis(oracle(np.moveaxis(x, 1, -1), weights), -1, 1)

    if hasattr(oracle, "vjp"):
        def vjp(x, weights, cotangent):
            dx, grads = oracle.vjp(np.moveaxis(x, 1, -1), weights, np.moveaxis(cotangent, 1, -1))
            return np.moveaxis(dx, -1, 1), grads

        forward.vjp = vjp
    return forward
