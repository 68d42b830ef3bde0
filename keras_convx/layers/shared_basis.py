"""Deeply shared filter bases: `FilterBasis` and `SharedBasisConv2D`."""

import uuid
import weakref

import keras
from keras import ops

from keras_convx import constraints
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._common import CONV_OBJECTS
from keras_convx.ops import shared_basis as sb
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


def _saving_scope_map():
    """The object map of Keras' saving/loading `ObjectSharingScope`, or None outside one."""
    try:
        from keras.src.backend.common import global_state  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a Keras without the scope
        return None
    return global_state.get_global_attribute("shared_objects/id_to_obj_map")


# clone_model rebuilds each layer with `from_config(get_config())`, outside any sharing scope.
# The users of one basis then meet here: the first user of a clone creates the new basis, the
# others of the same clone join it; a user name seen twice for one key means a new clone.
_CLONE_SESSIONS = {}


def _deserialize_basis(basis_config, user_name):
    """The FilterBasis for a user's config: one per `share_key` per load or clone."""
    key = basis_config.get("config", {}).get("share_key")
    basis_config = {k: v for k, v in basis_config.items() if k != "shared_object_id"}
    scope = _saving_scope_map()
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


@register
class SharedBasisConv2D(keras.layers.Layer):
    """2D convolution through a shared filter basis (Kang & Kim, NeurIPS 2021).

    The layer's k×k filters are combinations of a basis: `unique_bases` filters of its own
    followed by the `size` filters of a `FilterBasis` shared with other layers, in that order
    ([unique u; shared s]). The basis responses go through an (unshared) batch norm, then a
    1×1 convolution with the layer's coefficients gives the `filters` outputs:

    `y = BN(conv(x, [U; B])) @ A`   — equivalently one conv with `[U; B]·diag(γ/σ)·A`.

    Two exact execution orders: `"basis_first"` (basis conv, batch norm, 1×1 mix; cheaper when
    u + s < filters) and `"kernel_first"` (synthesise the k×k kernel, one conv).
    `implementation="auto"` picks the cheaper by multiply-adds per pixel
    (`keras_convx.ops.shared_basis.choose_order`). A basis batch norm in training mode needs
    the basis responses' batch statistics, so training with `basis_batch_norm=True` always runs
    basis-first; in inference the batch norm is an affine map folded into the kernel.

    Args:
        filters: int, the number of output channels.
        basis: the shared `FilterBasis` (its `kernel_size` is this layer's kernel size).
        unique_bases: int ≥ 0, the layer's own basis filters (`u`, default 0).
        basis_part: which part of a multi-part basis to use (default 0).
        basis_batch_norm: bool, batch norm over the u + s basis responses (default True, as
            the paper; its statistics and affine are per layer).
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        activation: activation of the output, or None.
        use_bias: bool (default False: the paper follows the conv with a batch norm).
        implementation: `"auto"`, `"basis_first"` or `"kernel_first"`.
        basis_bn_momentum, basis_bn_epsilon: of the basis batch norm (defaults 0.9 and 1e-5,
            PyTorch's 0.1 / 1e-5 as in the official code).
        basis_bn_synchronized: bool (default False). Under `tf.distribute` (TensorFlow),
            the basis batch norm's statistics come from all replicas' batches (one all-reduce
            per step), as `keras.layers.BatchNormalization(synchronized=True)`; JAX's
            `keras.distribution.DataParallel` always uses the global batch; elsewhere no
            effect, so a config saved with it loads on every backend.
        kernel_initializer: for the unique basis and the coefficients (default He normal
            with fan_out, as the official code).
        bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`; the kernel ones apply
            to the unique basis and the coefficients (the shared basis has its own).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4-D tensor `(B, H, W, c_in)` or `(B, c_in, H, W)`, c_in matching the basis.

    Output shape: `(B, H', W', filters)` or `(B, filters, H', W')`.

    Example:

    >>> basis = keras_convx.layers.FilterBasis(size=16, kernel_size=3)
    >>> convs = [keras_convx.layers.SharedBasisConv2D(32, basis, unique_bases=1)
    ...          for _ in range(8)]          # 8 layers, one 3×3×32×16 basis
    >>> x = keras.random.normal((2, 16, 16, 32))
    >>> for conv in convs:
    ...     x = conv(x)

    Reference: W. Kang, D. Kim, "Deeply Shared Filter Bases for Parameter-Efficient
    Convolutional Neural Networks", NeurIPS 2021.
    """

    def __init__(
        self,
        filters,
        basis,
        unique_bases=0,
        basis_part=0,
        basis_batch_norm=True,
        strides=1,
        padding="same",
        data_format=None,
        activation=None,
        use_bias=False,
        implementation="auto",
        basis_bn_momentum=0.9,
        basis_bn_epsilon=1e-5,
        basis_bn_synchronized=False,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(basis, FilterBasis):
            raise TypeError(
                "Expected basis to be a keras_convx.layers.FilterBasis. "
                f"Received: basis={basis!r}"
            )
        self.filters = _common.integer("filters", filters)
        self.basis = basis
        self.unique_bases = _common.integer("unique_bases", unique_bases, minimum=0)
        self.basis_part = _common.integer("basis_part", basis_part, minimum=0)
        if self.basis_part >= basis.parts:
            raise ValueError(
                f"Expected basis_part < basis.parts ({basis.parts}). "
                f"Received: basis_part={basis_part}"
            )
        self.basis_batch_norm = _common.boolean("basis_batch_norm", basis_batch_norm)
        self.kernel_size = basis.kernel_size
        self.strides = normalize_pair("strides", strides)
        self.padding = _common.choice("padding", padding, ("same", "valid"))
        self.data_format = _common.data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.use_bias = _common.boolean("use_bias", use_bias)
        self.implementation = _common.choice("implementation", implementation, sb.ORDERS)
        self.basis_bn_momentum = _common.number("basis_bn_momentum", basis_bn_momentum, 0, 1,
                                                exclusive_maximum=True)
        self.basis_bn_epsilon = _common.number("basis_bn_epsilon", basis_bn_epsilon, 0,
                                               exclusive_minimum=True)
        self.basis_bn_synchronized = _common.boolean("basis_bn_synchronized",
                                                     basis_bn_synchronized)
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.VarianceScaling(
                2.0, "fan_out", "untruncated_normal"
            )
        _common.set_objects(
            self,
            activation=activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        self.basis_bn = None
        if self.basis_batch_norm:
            self.basis_bn = keras.layers.BatchNormalization(
                axis=_common.channel_axis(self.data_format),
                momentum=self.basis_bn_momentum,
                epsilon=self.basis_bn_epsilon,
                # Keras refuses synchronized=True off TensorFlow; the setting is kept in
                # this layer's config either way.
                synchronized=(self.basis_bn_synchronized
                              and keras.backend.backend() == "tensorflow"),
                dtype=self.dtype_policy,
                name="basis_bn",
            )

    @property
    def rank(self):
        """u + s, the number of basis filters this layer combines."""
        return self.unique_bases + self.basis.size

    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None:
            raise ValueError("The channel dimension of a SharedBasisConv2D input must be defined.")
        self.basis.build_for_channels(channels, user=f"{self.name!r} (input_shape="
                                      f"{tuple(input_shape)})")
        _common.lock_channels(self, channels, self.data_format)
        self.unique_kernel = None
        if self.unique_bases:
            self.unique_kernel = _common.add_conv_weight(
                self, "unique_kernel", (*self.kernel_size, channels, self.unique_bases)
            )
        self.coefficients = _common.add_conv_weight(
            self, "coefficients", (self.rank, self.filters)
        )
        self.bias = _common.add_bias(self, self.filters)
        if self.basis_bn is not None:
            bn_shape = [None] * 4
            bn_shape[_common.channel_axis(self.data_format)] = self.rank
            self.basis_bn.build(tuple(bn_shape))

    def basis_kernel(self):
        """The (k_h, k_w, c_in, u + s) kernel [unique; shared part], float32."""
        shared = self.basis.part(self.basis_part)
        if self.unique_kernel is None:
            return shared
        return ops.concatenate([self.unique_kernel, shared], axis=-1)

    def resolved_implementation(self, training=False):
        """The order `call` runs for `training`."""
        if self.basis_bn is not None and training:
            return "basis_first"
        if self.implementation != "auto":
            return self.implementation
        channels = self.basis.input_channels
        return sb.choose_order(self.kernel_size, channels, self.rank, self.filters)

    def _folded_bn(self):
        """(scale, shift) of the basis batch norm in inference mode."""
        bn = self.basis_bn
        scale = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
        scale = scale * ops.cast(bn.gamma, "float32")
        shift = ops.cast(bn.beta, "float32") - ops.cast(bn.moving_mean, "float32") * scale
        return scale, shift

    def equivalent_conv(self):
        """The equivalent inference-mode Conv2D (kernel, bias), the basis batch norm folded in."""
        scale, shift = self._folded_bn() if self.basis_bn is not None else (None, None)
        kernel = sb.synthesize_kernel(self.basis_kernel(), self.coefficients, scale)
        bias = ops.zeros((self.filters,), "float32")
        if shift is not None:
            bias = ops.matmul(ops.expand_dims(shift, 0), self.coefficients)[0]
        if self.bias is not None:
            bias = bias + self.bias
        return kernel, bias

    def synthesized_kernel(self):  # deprecated name of equivalent_conv()
        return self.equivalent_conv()

    def call(self, inputs, training=None):
        dtype = self.compute_dtype
        order = self.resolved_implementation(bool(training))
        basis = ops.cast(self.basis_kernel(), dtype)
        coefficients = ops.cast(self.coefficients, dtype)
        args = (self.strides, self.padding, self.data_format)
        if order == "basis_first":
            y = conv2d(inputs, basis, *args)
            if self.basis_bn is not None:
                y = self.basis_bn(y, training=training)
            y = sb.mix_channels(y, coefficients, self.data_format)
        else:
            scale = shift = None
            if self.basis_bn is not None:
                scale, shift = (ops.cast(t, dtype) for t in self._folded_bn())
            y = sb.kernel_first(inputs, basis, coefficients, *args, scale=scale, shift=shift)
        return _common.bias_and_activation(self, y)

    def compute_output_shape(self, input_shape):
        return conv_output_shape(
            input_shape, self.filters, self.kernel_size, self.strides, self.padding,
            self.data_format,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "basis": keras.saving.serialize_keras_object(self.basis),
                "unique_bases": self.unique_bases,
                "basis_part": self.basis_part,
                "basis_batch_norm": self.basis_batch_norm,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "implementation": self.implementation,
                "basis_bn_momentum": self.basis_bn_momentum,
                "basis_bn_epsilon": self.basis_bn_epsilon,
                "basis_bn_synchronized": self.basis_bn_synchronized,
            }
        )
        config.update(_common.serialize_objects(self, *CONV_OBJECTS))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        basis = config.pop("basis")
        if isinstance(basis, dict):
            basis = _deserialize_basis(basis, config.get("name"))
        return cls(basis=basis, **config)
