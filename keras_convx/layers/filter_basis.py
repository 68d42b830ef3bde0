"""The shared filter basis of deeply shared filter bases (Kang & Kim, NeurIPS 2021):
`FilterBasis`, its global orthonormality penalty `apply_global_orthonormal`, and how one
basis stays ONE object across `.keras` loads and `clone_model` (`deserialize_basis`).
`SharedBasisConv2D`, the layer that uses it, is in `keras_convx.layers.shared_basis`.
"""

import uuid
import weakref

import keras
from keras import ops

from keras_convx import constraints
from keras_convx import keras_compat
from keras_convx import regularizers
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.ops.core import conv2d
from keras_convx.ops.core import conv_output_shape
from keras_convx.ops.core import normalize_pair

_BASIS_OBJECTS = ("kernel_initializer", "kernel_regularizer", "kernel_constraint")

@register
class FilterBasis(keras.layers.Layer):
    """A basis of k×k×c_in filters that many `SharedBasisConv2D` layers share.

    The basis is ONE variable, `kernel`, of shape `(k_h, k_w, c_in, parts·size)`, created on
    first use (by the first `SharedBasisConv2D` built with it, or by calling the basis itself);
    every layer built with the same `FilterBasis` reads that variable, so parameter counts count
    it once and its gradient is the sum of all users' contributions. The sharing survives
    `.keras` save/load (Keras' shared-object mechanism) and `keras.models.clone_model` (the
    clone's users share one new basis).

    With `parts > 1` the variable holds `parts` bases of `size` filters stacked on the filter
    axis — the paper's "DoubleShared" form (`parts=2`: conv1 of each block uses part 0, conv2
    part 1). The orthogonal initialisation then covers all `parts·size` filters jointly, and so
    does an orthonormality regulariser on the variable (`keras_convx.regularizers.Orthonormal`),
    as in the official code.

    Called directly, the layer is the plain convolution of its input with the whole basis
    (stride 1, "same" padding), i.e. the official `shared_basis` conv.

    Args:
        size: int ≥ 1, the number of filters per part (`s`).
        kernel_size: int or tuple of 2 ints.
        parts: int ≥ 1, number of bases stacked in the variable (default 1).
        kernel_initializer: default `"orthogonal"` (orthonormal filters when
            `parts·size ≤ k_h·k_w·c_in`).
        kernel_regularizer: e.g. `keras_convx.regularizers.Orthonormal(10.0)`.
        kernel_constraint: e.g. `keras_convx.constraints.Orthonormal()` (needs
            `parts·size ≤ k_h·k_w·c_in`, checked when the basis is built).
        data_format: used only when the basis is called directly.
        share_key: identity token used to keep the sharing through `clone_model`; leave None.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Input shape (direct call): 4-D tensor `(B, H, W, c_in)` or `(B, c_in, H, W)`.

    Output shape (direct call): `(B, H, W, parts·size)` or `(B, parts·size, H, W)`.

    Example:

    >>> basis = keras_convx.layers.FilterBasis(8, 3,
    ...     kernel_regularizer=keras_convx.regularizers.Orthonormal(10.0))
    >>> x = keras.Input((32, 32, 16))
    >>> y = keras_convx.layers.SharedBasisConv2D(16, basis, unique_bases=1)(x)
    >>> y = keras_convx.layers.SharedBasisConv2D(16, basis, unique_bases=1)(y)
    >>> model = keras.Model(x, y)   # one basis variable, used twice

    Reference: W. Kang, D. Kim, "Deeply Shared Filter Bases for Parameter-Efficient
    Convolutional Neural Networks", NeurIPS 2021.
    """

    def __init__(
        self,
        size,
        kernel_size,
        parts=1,
        kernel_initializer="orthogonal",
        kernel_regularizer=None,
        kernel_constraint=None,
        data_format=None,
        share_key=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = _common.integer("size", size)
        self.kernel_size = normalize_pair("kernel_size", kernel_size)
        self.parts = _common.integer("parts", parts)
        self.data_format = _common.data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        if share_key is not None and not isinstance(share_key, str):
            raise TypeError(f"Expected share_key to be a str or None. Received: {share_key!r}")
        self.share_key = share_key or uuid.uuid4().hex
        _common.set_objects(
            self,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            kernel_constraint=kernel_constraint,
        )

    @property
    def total_size(self):
        """`parts · size`, the number of filters in the variable."""
        return self.parts * self.size

    @property
    def input_channels(self):
        """c_in, or None before the basis is built."""
        return self.kernel.shape[2] if self.built else None

    def _check_constraint(self, channels):
        fan_in = self.kernel_size[0] * self.kernel_size[1] * channels
        if isinstance(self.kernel_constraint, constraints.Orthonormal) and self.total_size > fan_in:
            raise ValueError(
                "An orthonormal constraint needs parts·size <= k_h·k_w·c_in (at most fan_in "
                f"orthonormal rows). Received: size={self.size}, parts={self.parts}, "
                f"kernel_size={self.kernel_size}, c_in={channels} (fan_in {fan_in})."
            )

    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None:
            raise ValueError("The channel dimension of a FilterBasis input must be defined.")
        self._check_constraint(channels)
        self.kernel = _common.add_conv_weight(
            self, "kernel", (*self.kernel_size, channels, self.total_size)
        )
        _common.lock_channels(self, channels, self.data_format)

    def build_for_channels(self, channels, user="a layer"):
        """Builds the basis for `channels` input channels, or checks that it was (`user`
        names the caller in the error)."""
        if not self.built:
            shape = (None, None, None, channels)
            if self.data_format == "channels_first":
                shape = (None, channels, None, None)
            self.build(shape)
            self.built = True
        elif self.input_channels != channels:
            raise ValueError(
                f"The basis {self.name!r} has c_in={self.input_channels} but {user} receives "
                f"inputs with {channels} channels. A basis serves layers with one input width."
            )

    def part(self, index):
        """The (k_h, k_w, c_in, size) kernel of part `index`."""
        start = index * self.size
        return self.kernel[..., start : start + self.size]

    def call(self, inputs):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        return conv2d(inputs, kernel, 1, "same", self.data_format)

    def compute_output_shape(self, input_shape):
        return conv_output_shape(
            input_shape, self.total_size, self.kernel_size, (1, 1), "same", self.data_format
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "kernel_size": self.kernel_size,
                "parts": self.parts,
                "data_format": self.data_format,
                "share_key": self.share_key,
            }
        )
        config.update(_common.serialize_objects(self, *_BASIS_OBJECTS))
        return config


def apply_global_orthonormal(bases, factor):
    """Puts one globally normalised orthonormality penalty on several `FilterBasis` objects.

    Each basis g gets `Orthonormal(factor, normalizer=Σ_g s_g²)` (s_g = `parts·size`), so the
    model's regularisation loss is `factor · Σ_g ‖B_g B_gᵀ − I‖² / Σ_g s_g²` — the paper's
    L_orth. Works before or after the bases are built. Returns the regulariser.

    Example:

    >>> blocks = [FilterBasis(16, 3) for _ in range(3)]
    >>> penalty = apply_global_orthonormal(blocks, 10.0)  # λ = 10, over all three bases
    >>> all(block.kernel_regularizer is penalty for block in blocks)
    True
    """
    bases = list(bases)
    if not bases or not all(isinstance(b, FilterBasis) for b in bases):
        raise TypeError(
            f"Expected bases to be a non-empty list of FilterBasis. Received: bases={bases!r}"
        )
    regularizer = regularizers.Orthonormal(factor, normalizer=sum(b.total_size**2 for b in bases))
    for basis in bases:
        basis.kernel_regularizer = regularizer
        if basis.built:
            basis.kernel.regularizer = regularizer
    return regularizer


# clone_model rebuilds each layer with `from_config(get_config())`, outside any sharing scope.
# The users of one basis then meet here: the first user of a clone creates the new basis, the
# others of the same clone join it; a user name seen twice for one key means a new clone.
_CLONE_SESSIONS = {}


def deserialize_basis(basis_config, user_name):
    """The FilterBasis for a user's config: one per `share_key` per load or clone."""
    key = basis_config.get("config", {}).get("share_key")
    basis_config = {k: v for k, v in basis_config.items() if k != "shared_object_id"}
    scope = keras_compat.sharing_scope_map()
    if scope is not None and key is not None:
        # Loading a .keras file: Keras marks only some users' copies as shared, so the
        # basis is matched by its own key within this load.
        scope_key = ("keras_convx>FilterBasis", key)
        if scope_key not in scope:
            scope[scope_key] = keras.saving.deserialize_keras_object(basis_config)
        return scope[scope_key]
    entry = _CLONE_SESSIONS.get(key)
    if entry is not None:
        basis_ref, users = entry
        basis = basis_ref()
        if basis is not None and user_name not in users:
            users.add(user_name)
            return basis
    basis = keras.saving.deserialize_keras_object(basis_config)
    if key is not None:
        for dead in [k for k, (ref, _) in _CLONE_SESSIONS.items() if ref() is None]:
            del _CLONE_SESSIONS[dead]
        _CLONE_SESSIONS[key] = (weakref.ref(basis), {user_name})
    return basis
