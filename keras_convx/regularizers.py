"""Regularizers of keras_convx: `Orthonormal` (deeply shared filter bases)."""

import keras

from keras_convx import arguments
from keras_convx._registry import register
from keras_convx.ops import shared_basis as sb

# `apply_global_orthonormal` lives beside the basis it normalises,
# `keras_convx.layers.apply_global_orthonormal`; the package attaches it here too (deprecated
# name), so this module imports nothing above the layers.
__all__ = ["Orthonormal"]


@register(name="OrthonormalRegularizer")
class Orthonormal(keras.regularizers.Regularizer):
    """Orthonormality penalty for a kernel of any rank: `factor · ‖M Mᵀ − I‖_F² / normalizer`.

    `M` is the kernel as the (filters, fan_in) matrix of its filters (the last axis indexes
    filters, as in every Keras kernel: a `(k, k, c_in, s)` conv kernel gives s rows of
    k·k·c_in). The diagonal is included, so the penalty asks for unit-norm AND mutually
    orthogonal filters. With `normalizer=None` it is divided by `filters²` — the official
    code's mean over the Gram matrix entries of one basis. Keras' own
    `OrthogonalRegularizer` accepts rank-2 inputs only and ignores the norms.

    The paper normalises GLOBALLY over all bases g of a model, Σ_g ‖B_g B_gᵀ − I‖² / Σ_g s_g²:
    that is this regulariser on every basis with `normalizer = Σ_g s_g²`, which
    `keras_convx.layers.apply_global_orthonormal(bases, factor)` sets up. The jointly-orthogonal "DoubleShared"
    form is a `FilterBasis(parts=2)`: the penalty covers the stacked [B_1; B_2].

    Args:
        factor: float ≥ 0, the weight λ (the paper uses 10).
        normalizer: None (→ filters²) or a positive number dividing ‖M Mᵀ − I‖².

    Example:

    >>> basis = keras_convx.layers.FilterBasis(
    ...     16, 3, kernel_regularizer=keras_convx.regularizers.Orthonormal(10.0))
    >>> dense = keras.layers.Dense(8, kernel_regularizer=Orthonormal(1.0))  # any rank
    """

    def __init__(self, factor=1.0, normalizer=None):
        self.factor = arguments.number("factor", factor, 0)
        self.normalizer = arguments.number("normalizer", normalizer, 0, exclusive_minimum=True,
                                           allow_none=True)

    def __call__(self, x):
        sb.check_kernel_rank(x, "regularizers.Orthonormal")
        # float32 for every variable dtype: Keras 3.15 adds the penalties up in float32 on
        # TensorFlow, where a float64 one fails the step (as Keras' own L2 does in a float64
        # model)
        x = keras.ops.cast(x, "float32")
        rows = x.shape[-1]
        normalizer = self.normalizer if self.normalizer is not None else float(rows * rows)
        return self.factor * sb.orthonormality_residual(x) / normalizer

    def get_config(self):
        return {"factor": self.factor, "normalizer": self.normalizer}
