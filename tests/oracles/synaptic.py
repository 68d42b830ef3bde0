"""NumPy oracle for synaptic strength, written from the spec (float64, channels_last).

W[:, :, i, j] = m_ij · s_ij · V[:, :, i, j] / ‖V[:, :, i, j]‖_F, then a (grouped) convolution
by its definition (explicit zero padding, a loop over taps) plus the bias.
"""

import numpy as np

from tests.oracles.shared_basis import conv2d


def kernel(direction, strength, mask=None, epsilon=1e-12):
    norm = np.sqrt(np.sum(direction**2, axis=(0, 1)) + epsilon)
    scale = strength if mask is None else strength * mask
    return direction * (scale / norm)[None, None]


def dilate(w, rate):
    """The dilated kernel by its definition: tap (i, j) moves to (rate·i, rate·j), zeros
    between taps."""
    k = w.shape[0]
    out = np.zeros(((k - 1) * rate + 1, (k - 1) * rate + 1, *w.shape[2:]))
    out[::rate, ::rate] = w
    return out


def synaptic_conv(x, direction, strength, mask=None, bias=None, *, stride=1, padding="valid",
                  groups=1, dilation=1):
    w = dilate(kernel(direction, strength, mask), dilation)
    cin_g, cout = w.shape[2], w.shape[3]
    cout_g = cout // groups
    pieces = [
        conv2d(x[..., g * cin_g : (g + 1) * cin_g], w[..., g * cout_g : (g + 1) * cout_g],
               stride, padding)
        for g in range(groups)
    ]
    y = np.concatenate(pieces, axis=-1)
    return y if bias is None else y + bias
