"""Initializers of keras_convx: `CentredIdentity` (the PDE layers start from K = I)."""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx._registry import register

__all__ = ["CentredIdentity"]


@register
class CentredIdentity(keras.initializers.Initializer):
    """Identity operator as a kernel: `eye(C, F)` at the centre tap, zeros elsewhere.

    For a `(C, F)` matrix it is `gain·eye(C, F)`; for a `(k, k, C, F)` convolution kernel the
    centre tap holds `gain·eye(C, F)`, so the convolution starts as the identity (or its
    rectangular truncation). The PDE layers start from K = I.

    Example:

    >>> w = CentredIdentity()((3, 3, 2, 2))
    >>> [float(v) for v in keras.ops.convert_to_numpy(w)[1, 1].ravel()]
    [1.0, 0.0, 0.0, 1.0]
    """

    def __init__(self, gain=1.0):
        self.gain = arguments.number("gain", gain)

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) not in (2, 4) or (len(shape) == 4 and shape[0] != shape[1]):
            raise ValueError(
                "CentredIdentity expects a (C, F) or (k, k, C, F) shape. "
                f"Received: shape={shape}"
            )
        w = np.zeros(shape, dtype="float32")
        eye = self.gain * np.eye(shape[-2], shape[-1], dtype="float32")
        if len(shape) == 2:
            w[...] = eye
        else:
            w[shape[0] // 2, shape[1] // 2] = eye
        return keras.ops.convert_to_tensor(w, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {"gain": self.gain}

