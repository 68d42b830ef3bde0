"""NumPy forward passes transcribed from the official E4-Net PyTorch definitions
(github.com/LingshenHe/Efficient-Equivariant-Network, `model/group_op.py`,
`model/architecture.py`, `model/resnet.py`), used to check the weight porting of
`keras_convx.layers.group_conv.from_official_weights`, `keras_convx.layers.e4_conv.
from_official_weights` and `keras_convx.applications.e4net.from_official_weights`.

Everything follows the official code's own layout, independent of keras_convx: NCHW float64,
parameters keyed by the official `state_dict` names, the element transforms as the official
`forward`s spell them (`rot90` over the kernel's last two axes, mirrors = transpose then
`rot90` by 7 − g), the input-slot tables as the official code writes them, convolutions by an
explicit loop over taps with the official symmetric padding (k − 1)/2.
"""

import numpy as np

from tests.oracles import group as group_oracle

# The official slot orders: output element g reads the stored slot ROWS[g][h] at input h
# (the official code writes the same tables as the spec's, tests/oracles/group.py).
P4_ROWS = [[(h - g) % 4 for h in range(4)] for g in range(4)]
P8_ROWS = group_oracle.P8


def rows(order):
    return P4_ROWS if order == 4 else P8_ROWS


def element(w, g):
    """The official spatial transform of element g on the LAST two axes."""
    if g < 4:
        return np.rot90(w, g, axes=(-2, -1))
    return np.rot90(np.swapaxes(w, -2, -1), 7 - g, axes=(-2, -1))


def conv2d(x, w, padding):
    """torch.nn.functional.conv2d (cross-correlation) of x (B, Ci, H, W), w (Co, Ci, k, k)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(k):
        for j in range(k):
            y += np.einsum("bchw,oc->bohw", xp[:, :, i : i + oh, j : j + ow], w[:, :, i, j])
    return y


def max_pool2(x):
    """nn.MaxPool2d(2, 2): floor."""
    b, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def avg_pool(x, s):
    b, c, h, w = x.shape
    x = x[:, :, : h // s * s, : w // s * s]
    return x.reshape(b, c, h // s, s, w // s, s).mean(axis=(3, 5))


def lift(x, weight, order):
    """C_4_Conv / D_4_Conv: weight (F, Ci, 3, 3) → full (F, |G|, Ci, 3, 3), padding 1."""
    f, ci, k, _ = weight.shape
    full = np.stack([element(weight, g) for g in range(order)], axis=1)
    return conv2d(x, full.reshape(f * order, ci, k, k), (k - 1) // 2)


def group_conv(x, weight, order, stride=1, bias=None):
    """C_4_3x3 / D_4_3x3 (weight (F, C, |G|, k, k)) and C_4_1x1 / D_4_1x1 (weight (F, C, |G|)):
    full[:, g] = T_g(weight[:, :, ROWS[g]]) (no transform for 1×1); stride 2 = the stride-1
    conv then 2×2 max pooling; the per-field bias after it."""
    if weight.ndim == 3:
        weight = weight[..., None, None]
    f, c, n, k, _ = weight.shape
    full = np.stack([element(weight[:, :, rows(order)[g]], g) for g in range(order)], axis=1)
    y = conv2d(x, full.reshape(f * order, c * order, k, k), (k - 1) // 2)
    if stride != 1:
        y = max_pool2(y)
    if bias is not None:
        y = (y.reshape(y.shape[0], f, order, *y.shape[2:]) + bias[None, :, None, None, None]
             ).reshape(y.shape)
    return y


def batch_norm(x, params, order, eps=1e-5):
    """C_4_BN / D_4_BN in eval mode: BatchNorm3d over the (B, F, |G|, H, W) view."""
    b, c, h, w = x.shape
    v = x.reshape(b, c // order, order, h, w)
    shape = (1, -1, 1, 1, 1)
    v = (v - params["running_mean"].reshape(shape)) / np.sqrt(params["running_var"].reshape(shape) + eps)
    return (v * params["weight"].reshape(shape) + params["bias"].reshape(shape)).reshape(x.shape)


def group_norm(x, gamma, beta, groups, eps=1e-5):
    """nn.GroupNorm(groups, C): statistics per (sample, group), affine per channel."""
    b, c, h, w = x.shape
    v = x.reshape(b, groups, -1)
    v = (v - v.mean(axis=2, keepdims=True)) / np.sqrt(v.var(axis=2, keepdims=True) + eps)
    return v.reshape(x.shape) * gamma[None, :, None, None] + beta[None, :, None, None]


def e4(x, p, order, kernel_size, fields_per_slice, stride=1):
    """E4_C4 / E4_D4 forward. `p` maps the module's own keys (`v.0.weight`, `conv1.0.weight`,
    `conv1.1.weight`, `conv1.1.bias`, `conv2.0.net.weight`, `conv2.0.net.bias`) to arrays."""
    k = kernel_size
    t = x if stride == 1 else avg_pool(x, stride)
    t = group_conv(t, p["conv1.0.weight"], order)
    cr = p["conv1.0.weight"].shape[0]
    t = np.maximum(group_norm(t, p["conv1.1.weight"], p["conv1.1.bias"], cr), 0.0)
    b, _, h, w = t.shape
    conv3d = p["conv2.0.net.weight"].reshape(p["conv2.0.net.weight"].shape[0], cr)
    gen = np.einsum("qc,bcghw->bqghw", conv3d, t.reshape(b, cr, order, h, w))
    gen = gen + p["conv2.0.net.bias"][None, :, None, None, None]
    slices = gen.shape[1] // (k * k)
    gen = gen.reshape(b, slices, k, k, order, h, w)
    steered = np.stack([element(np.moveaxis(gen[:, :, :, :, g], (2, 3), (-2, -1)), g)
                        for g in range(order)], axis=2)  # (b, S, |G|, h, w, k, k)
    v = group_conv(x, p["v.0.weight"], order)
    out_fields = v.shape[1] // order
    pad = (k - 1) // 2
    vp = np.pad(v, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    v5 = vp.reshape(b, slices, fields_per_slice, order, *vp.shape[2:])
    y = np.zeros((b, slices, fields_per_slice, order, h, w))
    for i in range(k):
        for j in range(k):
            window = v5[..., i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride]
            y += steered[:, :, None, :, :, :, i, j] * window
    return y.reshape(b, out_fields * order, h, w)


def _sub(state, prefix):
    return {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}


def mnist_net(x, state, order, kernel_size, fields_per_slice):
    """E4_net / E4_netL in eval mode (dropout off): lift → BN → ReLU; conv2 → BN → ReLU →
    pool; conv3, conv4 (→ pool); conv5..conv7; group max; global max; fully_net.0."""
    def bn_relu(y, i):
        return np.maximum(batch_norm(y, _sub(state, f"bn{i}.bn"), order), 0.0)

    y = bn_relu(lift(x, state["conv1.weight"], order), 1)
    for i in range(2, 8):
        y = bn_relu(e4(y, _sub(state, f"conv{i}"), order, kernel_size, fields_per_slice), i)
        if i in (2, 4):
            y = max_pool2(y)
    b, c, h, w = y.shape
    y = y.reshape(b, c // order, order, h, w).max(axis=2).max(axis=(2, 3))
    return y @ state["fully_net.0.weight"].T + state["fully_net.0.bias"]


def resnet18(x, state, order, e4_layers, kernel_size=3, fields_per_slice=2):
    """C4ResNet / D4ResNet (BasicBlock [2, 2, 2, 2]) in eval mode."""
    def bn(y, prefix):
        return batch_norm(y, _sub(state, prefix + ".bn"), order)

    y = np.maximum(bn(lift(x, state["conv1.0.weight"], order), "conv1.1"), 0.0)
    for stage in range(2, 6):
        for block in range(2):
            prefix = f"conv{stage}_x.{block}"
            stride = 2 if stage > 2 and block == 0 else 1
            r = f"{prefix}.residual_function"
            z = group_conv(y, state[f"{r}.0.weight"], order, stride)
            z = np.maximum(bn(z, f"{r}.2"), 0.0)
            if e4_layers:
                z = e4(z, _sub(state, f"{r}.4"), order, kernel_size, fields_per_slice)
            else:
                z = group_conv(z, state[f"{r}.4.weight"], order, bias=state.get(f"{r}.4.bias"))
            z = bn(z, f"{r}.5")
            if f"{prefix}.shortcut.0.weight" in state:
                shortcut = bn(group_conv(y, state[f"{prefix}.shortcut.0.weight"], order, stride),
                              f"{prefix}.shortcut.1")
            else:
                shortcut = y
            y = np.maximum(z + shortcut, 0.0)
    b, c, h, w = y.shape
    y = y.reshape(b, c // order, order, h, w).max(axis=2).mean(axis=(2, 3))
    return y @ state["fc.weight"].T + state["fc.bias"]
