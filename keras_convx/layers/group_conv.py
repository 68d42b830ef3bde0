"""Group-equivariant convolutions for p4 and p4m.

`GroupLiftConv2D` (image → group feature map), `GroupConv2D` (group → group, any odd kernel
size; `kernel_size=1` is the 1×1 group convolution), `GroupBatchNormalization` and
`GroupPooling` (group → ordinary features).

A group feature map is an ordinary 4-D tensor: channels_last `(B, H, W, fields·|G|)` with
channel index `field·|G| + g` (channels_first `(B, fields·|G|, H, W)`), so ReLU, Dropout,
Add, MaxPooling2D and friends compose with these layers unchanged. `filters` counts fields.
The group elements are `rot90^g` (g = 0..3, NumPy's counter-clockwise `rot90`) and, for p4m,
their mirrored versions g = 4..7 (see `keras_convx.ops.group`).
"""

import keras

from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._common import CONV_OBJECTS
from keras_convx.ops import group as gops
from keras_convx.ops.core import conv2d
from keras_convx.ops.core import normalize_pair


class _GroupConvBase(keras.layers.Layer):
    """Shared arguments, weights and forward pass of the lifting and group convolutions."""

    _group_input = True

    def __init__(
        self,
        filters,
        kernel_size,
        group="p4",
        strides=1,
        padding="same",
        data_format=None,
        activation=None,
        use_bias=True,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = _common.integer("filters", filters)
        self.kernel_size = _common.odd_kernel_size(kernel_size)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        self.strides = normalize_pair("strides", strides)
        self.padding = _common.choice("padding", padding, ("same", "valid"))
        self.data_format = _common.data_format(data_format)
        self.activation = keras.activations.get(activation)
        self.use_bias = _common.boolean("use_bias", use_bias)
        _common.set_objects(
            self,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)
        # Static NumPy gather table, built here (eagerly) and read as a constant by `call`.
        self._table = self._gather_table()

    def _kernel_in_channels(self, channels):
        """Input channels of the stored kernel; group inputs override it to validate |G|."""
        return channels

    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None:
            raise ValueError(
                f"The channel dimension of the inputs to {type(self).__name__} must be known. "
                f"Received: input_shape={input_shape}"
            )
        k = self.kernel_size
        self.kernel = _common.add_conv_weight(
            self, "kernel", (k, k, self._kernel_in_channels(channels), self.filters)
        )
        self.bias = _common.add_bias(self, self.filters)
        _common.lock_channels(self, channels, self.data_format)

    def dense_kernel(self):
        """The equivalent ordinary `(k, k, C_in, filters·|G|)` Conv2D kernel."""
        return self._expand(self.kernel)

    def dense_bias(self):
        """The equivalent `(filters·|G|,)` Conv2D bias (each field's bias repeated |G| times), or None."""
        return None if self.bias is None else keras.ops.repeat(self.bias, self.order)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        kernel = self._expand(keras.ops.cast(self.kernel, self.compute_dtype))
        y = conv2d(x, kernel, self.strides, self.padding, self.data_format)
        if self.bias is not None:
            bias = keras.ops.repeat(keras.ops.cast(self.bias, self.compute_dtype), self.order)
            if self.data_format == "channels_first":
                bias = keras.ops.reshape(bias, (-1, 1, 1))
            y = y + bias
        if self.activation is not None:
            y = self.activation(y)
        return y

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = input_shape[1:3] if self.data_format == "channels_last" else input_shape[2:4]
        out = []
        for n, s in zip(spatial, self.strides):
            if n is None:
                out.append(None)
            elif self.padding == "same":
                out.append(-(-n // s))
            else:
                if n < self.kernel_size:
                    raise ValueError(
                        f"Input size {n} smaller than kernel_size ({self.kernel_size}) with "
                        f"padding='valid'. Received: input_shape={input_shape}"
                    )
                out.append((n - self.kernel_size) // s + 1)
        channels = self.filters * self.order
        if self.data_format == "channels_last":
            return (input_shape[0], *out, channels)
        return (input_shape[0], channels, *out)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "group": self.group,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
            }
        )
        config.update(_common.serialize_objects(self, *CONV_OBJECTS))
        return config


_CONV_ARGS_DOC = """
    Args:
        filters: int, the number of output fields (the output has `filters·|G|` channels).
        kernel_size: odd int (or a pair of equal odd ints).
        group: `"p4"` (4 rotations, default) or `"p4m"` (4 rotations × mirror, |G| = 8).
        strides: int or tuple of 2 ints. Stride 1 with `"same"` padding is exactly
            equivariant; larger strides are only equivariant on inputs whose size makes the
            sampling grid symmetric.
        padding: `"same"` (default) or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        activation: activation applied to the output, or None.
        use_bias: bool; one bias per output field, shared by its |G| channels.
        kernel_initializer: initializer of the stored kernel (default `"he_normal"`, the
            official code's scale).
        bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`, on the stored
            (unexpanded) weights.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).
"""


@register
class GroupLiftConv2D(_GroupConvBase):
    __doc__ = (
        """Lifting convolution: an ordinary image → a p4/p4m group feature map.

    `y[f·|G| + g] = x ⋆ T_g(w[f])` (cross-correlation), where `T_g` is the spatial transform
    of group element g (`rot90^g`; for p4m the mirrored elements `rot90^(7-g)(wᵀ)` for g ≥ 4).
    Rotating (or, for p4m, mirroring) the input rotates the output spatially and permutes
    its group axis (`keras_convx.analysis.equivariance_error` measures it).
"""
        + _CONV_ARGS_DOC
        + """
    Input shape:
        `(batch, rows, cols, channels)` (channels_last) or `(batch, channels, rows, cols)`.

    Output shape:
        `(batch, new_rows, new_cols, filters·|G|)` (channels_last), channel `f·|G| + g`.

    Weights:
        `kernel` `(k, k, channels, filters)`; `bias` `(filters,)` if `use_bias`.

    Example:

    >>> x = np.random.rand(2, 28, 28, 1).astype("float32")
    >>> GroupLiftConv2D(8, 3, group="p4")(x).shape
    (2, 28, 28, 32)
    """
    )

    _group_input = False

    def _gather_table(self):
        return gops.lift_gather_table(self.group, self.kernel_size)

    def _expand(self, kernel):
        return gops.lift_kernel(kernel, self.group, self._table)


@register
class GroupConv2D(_GroupConvBase):
    __doc__ = (
        """Group convolution on p4/p4m group feature maps (group → group).

    For output element g the filter applied to input element h is
    `T_g(w[:, :, P[g, h]])`, with `P` the group's permutation table (p4: `(h − g) mod 4`).
    `kernel_size=1` gives the 1×1 group convolution `W[f, g, c, h] = w[f, c, P[g, h]]`.
    The kernel expansion is one static gather from NumPy tables built once per config
    (`keras_convx.ops.group.group_kernel`), followed by one ordinary convolution.
"""
        + _CONV_ARGS_DOC
        + """
    Input shape:
        a group feature map, `(batch, rows, cols, fields·|G|)` (channels_last). The tensor
        does not carry its group: a p4 map (4 channels per field) fed to a p4m layer is
        accepted whenever its channel count is a multiple of 8, and silently read as half as
        many p4m fields. Keep one `group` per network (only the channel count is checked).

    Output shape:
        `(batch, new_rows, new_cols, filters·|G|)` (channels_last).

    Weights:
        `kernel` `(k, k, fields·|G|, filters)` (input channel `c·|G| + h`, the layout of the
        official code's `(filters, fields, |G|, k, k)` weight); `bias` `(filters,)`.

    Example:

    >>> x = np.random.rand(2, 16, 16, 8 * 4).astype("float32")
    >>> GroupConv2D(16, 3, group="p4")(x).shape
    (2, 16, 16, 64)
    """
    )

    def _kernel_in_channels(self, channels):
        if channels % self.order:
            raise ValueError(
                f"GroupConv2D with group={self.group!r} expects a group feature map whose channels "
                f"are a multiple of |G| = {self.order}. Received: {channels} channels"
            )
        return channels

    def _gather_table(self):
        return gops.group_gather_table(self.group, self.kernel_size)

    def _expand(self, kernel):
        return gops.group_kernel(kernel, self.group, self._table)


_BN_OBJECTS = (
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)


@register
class GroupBatchNormalization(keras.layers.Layer):
    """Batch normalization of a p4/p4m group feature map, one statistic and affine per field.

    Mean and variance of field f are taken over the batch, the spatial axes AND the field's
    |G| orientation channels, and its |G| channels share one `gamma` and one `beta`, so the
    layer commutes with the group action (per-channel `BatchNormalization` would not).
    Moving statistics follow `keras.layers.BatchNormalization`:
    `moving = moving·momentum + batch·(1 − momentum)`. It folds exactly into a
    `BatchNormalization` whose per-channel values repeat each field's |G| times
    (`keras_convx.export.fold`).

    Args:
        group: `"p4"` or `"p4m"`.
        momentum: float in [0, 1), momentum of the moving statistics.
        epsilon: float > 0 added to the variance.
        center: bool, learn `beta`.
        scale: bool, learn `gamma`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        synchronized: bool. Under `tf.distribute` (TensorFlow), compute the batch statistics
            over all replicas' batches (one all-reduce per step) instead of each replica's
            own, as `keras.layers.BatchNormalization(synchronized=True)` does. JAX's
            `keras.distribution.DataParallel` always uses the global batch; elsewhere no
            effect.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer, beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as in `keras.layers.BatchNormalization`.
        **kwargs: base layer arguments.

    Input/output shape:
        a group feature map, `(batch, rows, cols, fields·|G|)` (channels_last); unchanged.

    Weights:
        `gamma`, `beta`, `moving_mean`, `moving_variance`, each `(fields,)`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 3 * 8).astype("float32")
    >>> GroupBatchNormalization("p4m")(x, training=True).shape
    (2, 8, 8, 24)
    """

    _group_input = True

    def __init__(
        self,
        group="p4",
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        data_format=None,
        synchronized=False,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        self.momentum = _common.number("momentum", momentum, 0, 1, exclusive_maximum=True)
        self.epsilon = _common.number("epsilon", epsilon, 0, exclusive_minimum=True)
        self.center = _common.boolean("center", center)
        self.scale = _common.boolean("scale", scale)
        self.data_format = _common.data_format(data_format)
        self.synchronized = _common.boolean("synchronized", synchronized)
        _common.set_objects(
            self,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.supports_masking = True


    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None or channels % self.order:
            raise ValueError(
                f"GroupBatchNormalization with group={self.group!r} expects a known channel count "
                f"that is a multiple of |G| = {self.order}. Received: input_shape={input_shape}"
            )
        fields = channels // self.order
        self.gamma = self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=(fields,),
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=(fields,),
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(fields,),
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=(fields,),
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        _common.lock_channels(self, channels, self.data_format)

    def _broadcast(self, v):
        # per-field vector → shape broadcasting against split_fields' 5-D layout
        if self.data_format == "channels_last":
            return keras.ops.reshape(v, (1, 1, 1, -1, 1))
        return keras.ops.reshape(v, (1, -1, 1, 1, 1))

    def call(self, inputs, training=None, mask=None):
        fields = gops.split_fields(keras.ops.cast(inputs, "float32"), self.order, self.data_format)
        axes = (0, 1, 2, 4) if self.data_format == "channels_last" else (0, 2, 3, 4)
        if training and self.trainable:
            # only TensorFlow's moments all-reduce (and the others reject the flag); JAX's
            # DataParallel computes global statistics anyway
            synchronized = self.synchronized and keras.backend.backend() == "tensorflow"
            mean, variance = keras.ops.moments(fields, axes=axes, synchronized=synchronized)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        inv = keras.ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self.gamma
        offset = -mean * inv
        if self.beta is not None:
            offset = offset + self.beta
        y = fields * self._broadcast(inv) + self._broadcast(offset)
        return keras.ops.cast(gops.merge_fields(y, self.data_format), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "group": self.group,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "data_format": self.data_format,
                "synchronized": self.synchronized,
            }
        )
        config.update(_common.serialize_objects(self, *_BN_OBJECTS))
        return config


@register
class GroupPooling(keras.layers.Layer):
    """Pools a p4/p4m group feature map over its |G| orientation channels.

    `y[f] = max_g x[f·|G| + g]` (or the mean): the result is an ordinary feature map that
    is equivariant to rotating (and mirroring) the input in the plain spatial sense, and
    becomes invariant after a global spatial pool.

    Args:
        group: `"p4"` or `"p4m"`.
        pooling: `"max"` (default) or `"mean"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments.

    Input shape:
        `(batch, rows, cols, fields·|G|)` (channels_last).

    Output shape:
        `(batch, rows, cols, fields)` (channels_last).

    Example:

    >>> x = np.random.rand(2, 8, 8, 5 * 4).astype("float32")
    >>> GroupPooling("p4")(x).shape
    (2, 8, 8, 5)
    """

    _group_input = True

    def __init__(self, group="p4", pooling="max", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        self.pooling = _common.choice("pooling", pooling, ("max", "mean"))
        self.data_format = _common.data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        axis = 3 if self.data_format == "channels_last" else 1
        channels = input_shape[axis]
        if channels is None or channels % self.order:
            raise ValueError(
                f"GroupPooling with group={self.group!r} expects a known channel count that is a "
                f"multiple of |G| = {self.order}. Received: input_shape={input_shape}"
            )
        _common.lock_channels(self, channels, self.data_format)

    def call(self, inputs):
        fields = gops.split_fields(inputs, self.order, self.data_format)
        axis = 4 if self.data_format == "channels_last" else 2
        if self.pooling == "max":
            return keras.ops.max(fields, axis=axis)
        return keras.ops.mean(fields, axis=axis)

    def compute_output_shape(self, input_shape):
        input_shape = list(input_shape)
        axis = 3 if self.data_format == "channels_last" else 1
        if input_shape[axis] is not None:
            input_shape[axis] //= self.order
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"group": self.group, "pooling": self.pooling, "data_format": self.data_format})
        return config
