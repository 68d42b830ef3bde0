"""NumPy oracle for the shared-basis convolution, written from the spec (float64, channels_last).

y = BN(conv(x, [U; B])) @ A (+ bias): the convolution as its definition (explicit zero
padding, a loop over taps), the batch norm either with given moving statistics (inference)
or with the batch statistics over (B, H, W) (training), the 1×1 mix as a matrix product.
"""

import numpy as np


def same_padding(n, k, s):
    """Keras/TensorFlow "same": (before, after) zero padding for length n, kernel k, stride s."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv2d(x, kernel, stride, padding):
    """y[b, i, j, o] = Σ_{di, dj, c} x_pad[b, s·i + di, s·j + dj, c] · K[di, dj, c, o]."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        (t, b_), (l, r) = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (t, b_), (l, r), (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for di in range(kh):
        for dj in range(kw):
            patch = x[:, di : di + stride * (oh - 1) + 1 : stride, dj : dj + stride * (ow - 1) + 1 : stride]
            y += patch @ kernel[di, dj]
    return y


def shared_basis_conv(x, unique, shared, coefficients, *, stride=1, padding="same", bn=None,
                      training=False, epsilon=1e-5, bias=None):
    """The spec's shared conv. `bn` = dict(gamma, beta, mean, var) or None (no basis BN)."""
    basis = shared if unique is None else np.concatenate([unique, shared], axis=-1)
    h = conv2d(x, basis, stride, padding)
    if bn is not None:
        if training:
            mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        else:
            mean, var = bn["mean"], bn["var"]
        h = (h - mean) / np.sqrt(var + epsilon) * bn["gamma"] + bn["beta"]
    y = h @ coefficients
    return y if bias is None else y + bias


def orthonormality(kernel):
    """‖M Mᵀ − I‖_F², M the (filters, fan_in) rows of a kernel whose last axis is filters."""
    m = kernel.reshape(-1, kernel.shape[-1]).T
    return float(np.sum((m @ m.T - np.eye(m.shape[0])) ** 2))
