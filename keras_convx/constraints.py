"""Constraints of keras_convx: `Orthonormal` (deeply shared filter bases)."""

import keras

from keras_convx._registry import register
from keras_convx.ops import shared_basis as sb

__all__ = ["Orthonormal"]


@register(name="OrthonormalConstraint")
class Orthonormal(keras.constraints.Constraint):
    """Projects a kernel onto orthonormal filters after every optimizer update.

    The kernel, as the (filters, fan_in) matrix M of its filters (last axis = filters), is
    replaced by the polar factor U Vᵀ of its SVD M = U S Vᵀ: the nearest matrix with
    orthonormal rows in the Frobenius norm. Needs a weight of rank ≥ 2 (a bias or scalar is
    refused with a ValueError) and filters ≤ fan_in (a `FilterBasis` checks this when it is
    built; other layers get a ValueError at the first update). A weight holding NaN or inf is
    left as it is (the same on every backend).

    Example:

    >>> basis = keras_convx.layers.FilterBasis(
    ...     16, 3, kernel_constraint=keras_convx.constraints.Orthonormal())
    """

    def __call__(self, w):
        sb.check_kernel_rank(w, "constraints.Orthonormal")
        rows = w.shape[-1]
        fan_in = 1
        for d in w.shape[:-1]:
            fan_in *= d
        if rows > fan_in:
            raise ValueError(
                "Orthonormal needs filters <= fan_in to make the filters orthonormal. "
                f"Received a kernel of shape {tuple(w.shape)} ({rows} filters, fan_in {fan_in})."
            )
        # in float32 (float64 for a float64 kernel), whatever the variable's lower precision
        dtype = "float64" if keras.backend.standardize_dtype(w.dtype) == "float64" else "float32"
        projected = sb.orthonormal_projection(keras.ops.cast(w, dtype))
        return keras.ops.cast(projected, w.dtype)

    def get_config(self):
        return {}
