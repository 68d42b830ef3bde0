"""NumPy oracles for p4/p4m lifting, group convolution, group BN and the E4 layer.

Written from the spec's formulas (../shared/papers/equivariant_e4.md), independent of
keras_convx: filters are transformed one by one with np.rot90 / transposes, group tables are
copied from the spec, correlation is an explicit sum over window offsets. Float64,
channels_last (B, H, W, fields·|G|), channel index `field·|G| + g`.
"""

import numpy as np

from tests.oracles import group_any

SPEC_GROUPS = ("p4", "p4m")  # the spec's own tables below; other groups: tests/oracles/group_any

P4 = [[(h - g) % 4 for h in range(4)] for g in range(4)]
P8 = [
    [0, 1, 2, 3, 4, 5, 6, 7],
    [3, 0, 1, 2, 5, 6, 7, 4],
    [2, 3, 0, 1, 6, 7, 4, 5],
    [1, 2, 3, 0, 7, 4, 5, 6],
    [4, 5, 6, 7, 0, 1, 2, 3],
    [5, 6, 7, 4, 3, 0, 1, 2],
    [6, 7, 4, 5, 2, 3, 0, 1],
    [7, 4, 5, 6, 1, 2, 3, 0],
]


def order(group):
    return {"p4": 4, "p4m": 8}[group] if group in SPEC_GROUPS else group_any.order(group)


def table(group):
    if group not in SPEC_GROUPS:
        return group_any.table(group)
    return P4 if group == "p4" else P8


def transform(w, g, group="p4m"):
    """The spec's kernel transform of element g on the first two axes of w."""
    if group not in SPEC_GROUPS:
        return group_any.transform(w, g, group)
    if g < 4:
        return np.rot90(w, g, axes=(0, 1))
    return np.rot90(np.transpose(w, (1, 0, *range(2, w.ndim))), 7 - g, axes=(0, 1))


def same_padding(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def correlate(x, w, strides=(1, 1), padding="same"):
    """Cross-correlation of x (B, H, W, Ci) with w (k, k, Ci, Co), Keras' padding rules."""
    k = w.shape[0]
    if padding == "same":
        (t, b), (l, r) = same_padding(x.shape[1], k, strides[0]), same_padding(x.shape[2], k, strides[1])
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh = (x.shape[1] - k) // strides[0] + 1
    ow = (x.shape[2] - k) // strides[1] + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(k):
        for j in range(k):
            window = x[:, i : i + strides[0] * (oh - 1) + 1 : strides[0], j : j + strides[1] * (ow - 1) + 1 : strides[1]]
            y += window @ w[i, j]
    return y


def lift_dense(w, group):
    """(k, k, Ci, F) → (k, k, Ci, F·|G|), output channel f·|G| + g = transform(w[..., f], g)."""
    if group not in SPEC_GROUPS:
        return group_any.lift_dense(w, group)
    n = order(group)
    k, _, ci, f = w.shape
    out = np.zeros((k, k, ci, f * n))
    for o in range(f):
        for g in range(n):
            out[:, :, :, o * n + g] = transform(w[:, :, :, o], g)
    return out


def group_dense(w, group):
    """(k, k, Ci·|G|, F) → (k, k, Ci·|G|, F·|G|): filter (o, g) on input (c, h) is
    transform(w[:, :, c·|G| + P[g][h], o], g)."""
    if group not in SPEC_GROUPS:
        return group_any.group_dense(w, group)
    n = order(group)
    p = table(group)
    k, _, cig, f = w.shape
    out = np.zeros((k, k, cig, f * n))
    for o in range(f):
        for g in range(n):
            for c in range(cig // n):
                for h in range(n):
                    out[:, :, c * n + h, o * n + g] = transform(w[:, :, c * n + p[g][h], o], g)
    return out


def _bias(y, weights, n):
    if "bias" in weights:
        y = y + np.repeat(weights["bias"], n)
    return y


def lift_conv(x, weights, group, strides=(1, 1), padding="same"):
    return _bias(correlate(x, lift_dense(weights["kernel"], group), strides, padding), weights, order(group))


def group_conv(x, weights, group, strides=(1, 1), padding="same"):
    return _bias(correlate(x, group_dense(weights["kernel"], group), strides, padding), weights, order(group))


def group_batch_norm(x, gamma, beta, group, epsilon):
    """Training-mode group BN: per-field statistics over (B, H, W, |G|)."""
    n = order(group)
    b, h, w, c = x.shape
    f = x.reshape(b, h, w, c // n, n)
    mean = f.mean(axis=(0, 1, 2, 4), keepdims=True)
    var = f.var(axis=(0, 1, 2, 4), keepdims=True)
    y = (f - mean) / np.sqrt(var + epsilon) * gamma[:, None] + beta[:, None]
    return y.reshape(x.shape), mean.reshape(-1), var.reshape(-1)


def group_1x1(x, kernel, group):
    """1×1 group conv: out[o·|G|+g] = Σ_{c,h} x[c·|G|+h] · kernel[c·|G| + P[g][h], o]."""
    n = order(group)
    p = table(group)
    b, hh, ww, cg = x.shape
    fo = kernel.shape[1]
    xs = x.reshape(b, hh, ww, cg // n, n)
    out = np.zeros((b, hh, ww, fo, n))
    for g in range(n):
        for h in range(n):
            rows = np.arange(cg // n) * n + p[g][h]
            out[..., g] += xs[..., h] @ kernel[rows]
    return out.reshape(b, hh, ww, fo * n)


def group_norm_relu(t, gamma, beta, groups, epsilon):
    """max(GroupNorm(t), 0) on channels_last t (B, H, W, C): per image and group of C/groups
    consecutive channels, (t − mean) / sqrt(biased variance + ε) over (H, W, the group's
    channels), then · γ + β with γ, β (groups, 1) or (groups, C/groups)."""
    b, h, w, c = t.shape
    u = t.reshape(b, h, w, groups, c // groups)
    mean = u.mean(axis=(1, 2, 4), keepdims=True)
    var = u.var(axis=(1, 2, 4), keepdims=True)
    return np.maximum((u - mean) / np.sqrt(var + epsilon) * gamma + beta, 0.0).reshape(b, h, w, c)


def e4(x, weights, group, kernel_size, slices, strides=1, epsilon=1e-5, steering=True):
    """The spec's E4 layer, step by step, on channels_last x."""
    n = order(group)
    k = kernel_size
    p = (k - 1) // 2
    b, hh, ww, cg = x.shape
    gen_in = x
    if strides > 1:
        gen_in = x.reshape(b, hh // strides, strides, ww // strides, strides, cg).mean(axis=(2, 4))
    # 1. generator
    t = group_1x1(gen_in, weights["reduce_kernel"], group)
    cr = weights["reduce_kernel"].shape[1]
    gamma = weights["norm_gamma"].reshape(cr, -1)
    beta = weights["norm_beta"].reshape(cr, -1)
    t = group_norm_relu(t, gamma, beta, cr, epsilon).reshape(b, t.shape[1], t.shape[2], cr, n)
    kappa = np.einsum("bxyog,on->bxyng", t, weights["generator_kernel"]) + weights["generator_bias"][:, None]
    oh, ow = kappa.shape[1], kappa.shape[2]
    kappa = kappa.reshape(b, oh, ow, slices, k, k, n)
    # 2. steering: rotate each slice's k×k kernel of element g by g's transform
    steered = np.zeros_like(kappa)
    for g in range(n):
        for s in range(slices):
            block = np.moveaxis(kappa[:, :, :, s, :, :, g], (3, 4), (0, 1))
            steered[:, :, :, s, :, :, g] = np.moveaxis(transform(block, g, group) if steering else block, (0, 1), (3, 4))
    # 3. encoder
    v = group_1x1(x, weights["encoder_kernel"], group)
    fo = weights["encoder_kernel"].shape[1]
    v = v.reshape(b, hh, ww, fo, n)
    # 4. aggregation
    vp = np.pad(v, ((0, 0), (p, p), (p, p), (0, 0), (0, 0)))
    gc = fo // slices
    y = np.zeros((b, oh, ow, fo, n))
    for i in range(k):
        for j in range(k):
            window = vp[:, i : i + strides * (oh - 1) + 1 : strides, j : j + strides * (ow - 1) + 1 : strides]
            for m in range(fo):
                y[..., m, :] += steered[:, :, :, m // gc, i, j, :] * window[..., m, :]
    return y.reshape(b, oh, ow, fo * n)


# --------------------------------------------------------------------------- group actions


def rotate_group_map(y, group):
    """Action of the 90° rotation on a group map: new[j] = rot90(old[P[j]])."""
    n = order(group)
    perm = [3, 0, 1, 2] if n == 4 else [3, 0, 1, 2, 5, 6, 7, 4]
    b, h, w, c = y.shape
    f = y.reshape(b, h, w, c // n, n)[..., perm]
    return np.rot90(f, 1, axes=(1, 2)).reshape(b, w, h, c)


def mirror_group_map(y):
    """Action of the mirror (flip along W) on a p4m map: new[j] = flipW(old[M[j]])."""
    b, h, w, c = y.shape
    f = y.reshape(b, h, w, c // 8, 8)[..., [4, 5, 6, 7, 0, 1, 2, 3]]
    return f[:, :, ::-1].reshape(y.shape)
