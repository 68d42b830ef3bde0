"""The base of keras_convx's convolution layers, in the style of Keras' `BaseConv`.

`BaseConv2D` owns what `LogPolarConv2D`, `GroupLiftConv2D`, `GroupConv2D`,
`SharedBasisConv2D` and `SynapticConv2D` share with `keras.layers.Conv2D`: the standard
arguments (`filters`, `strides`, `padding`, `data_format`, `dilation_rate`, `groups`,
`activation`, `use_bias` and the initializers, regularizers and constraints), their
validation, the input channel checks of `build`, `call` (the family's `convolution_op`, then
bias and activation), `compute_output_shape` and the config entries. A family adds its own
arguments, its weights (`build`) and its maths (`convolution_op`). `E4Conv2D` is not a conv in
this sense (no padding, bias or activation; a stride is an average pool) and stands alone.
"""

import keras

from keras_convx import arguments
from keras_convx.ops.core import conv_output_shape
from keras_convx.ops.core import normalize_pair

# The initializers, regularizers and constraints of a plain conv layer.
CONV_OBJECTS = (
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)

_KINDS = (
    ("_initializer", keras.initializers),
    ("_regularizer", keras.regularizers),
    ("_constraint", keras.constraints),
    ("activation", keras.activations),
)


def object_kind(name):
    """The Keras module (`keras.initializers`, ...) that gets/serialises argument `name`, read
    from its suffix (`kernel_initializer`, `strength_regularizer`, `activation`, ...)."""
    for suffix, module in _KINDS:
        if name.endswith(suffix):
            return module
    raise KeyError(name)


def channel_axis(data_format):
    """The channel axis of a 4-D tensor: 3 for "channels_last", 1 for "channels_first"."""
    return 3 if data_format == "channels_last" else 1


def lock_channels(layer, channels, data_format):
    """After build: a Keras `InputSpec` that refuses 4-D inputs with another channel count
    (Keras' own message names the layer, the axis and the expected value)."""
    layer.input_spec = keras.layers.InputSpec(ndim=4, axes={channel_axis(data_format): channels})


def add_conv_weight(layer, name, shape, prefix="kernel"):
    """`layer.add_weight` with the layer's `<prefix>_initializer` and, where it has them,
    `<prefix>_regularizer` and `<prefix>_constraint`."""
    return layer.add_weight(
        name=name,
        shape=shape,
        initializer=getattr(layer, f"{prefix}_initializer"),
        regularizer=getattr(layer, f"{prefix}_regularizer", None),
        constraint=getattr(layer, f"{prefix}_constraint", None),
    )


class BaseConv2D(keras.layers.Layer):
    """Abstract 2-D convolution: the standard conv arguments, `call`, output shape, config.

    Subclasses declare their own arguments and the geometry ones with their defaults, and pass
    the initializers, regularizers and constraints on in `**kwargs` (their names and defaults
    are the class attribute `conv_objects`); they set `self.kernel_size` (an int or a pair),
    create their weights in `build` (with `input_channels(input_shape)`, `add_kernel` and
    `add_bias`) and define `convolution_op(inputs)`, the convolution without bias and
    activation, which `call` runs (there is no default: every conv family has its own).

    Class attributes:
        conv_arguments: the optional standard arguments the subclass takes and saves in its
            config (`"dilation_rate"`, `"groups"`); the others must be 1 (ValueError).
        conv_objects: {name: default} of the initializers, regularizers and constraints the
            layer takes as keyword arguments and saves in its config.
        bias_repeats: 1, or |G| for group layers (one bias per field, shared by its |G|
            channels).

    Args:
        filters: int ≥ 1, output channels (fields for group layers).
        strides: int or pair of ints ≥ 1.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        dilation_rate: int or pair ≥ 1 (only where `conv_arguments` lists it); not together
            with strides > 1, as `keras.layers.Conv2D`.
        groups: int ≥ 1 dividing `filters` and the input channels (where listed).
        activation: activation of the output, or None.
        use_bias: bool.
        activity_regularizer: as in `keras.layers.Layer`.
        **kwargs: the layer's initializers, regularizers and constraints (`conv_objects`;
            `keras.<kind>.get` is applied; saved by `get_config`), then base layer arguments
            (`name`, `dtype`, `trainable`, ...).
    """

    conv_arguments = ()
    conv_objects = {
        "kernel_initializer": "glorot_uniform",
        "bias_initializer": "zeros",
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
    }
    bias_repeats = 1

    def __init__(self, filters, *, strides=1, padding="same", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, activity_regularizer=None, **kwargs):
        objects = {name: kwargs.pop(name, default) for name, default in self.conv_objects.items()}
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = arguments.integer("filters", filters)
        self.strides = normalize_pair("strides", strides)
        self.padding = arguments.choice("padding", padding, ("same", "valid"))
        self.data_format = arguments.data_format(data_format)
        self.dilation_rate = normalize_pair("dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "strides > 1 is not supported together with dilation_rate > 1 (as Conv2D). "
                f"Received: strides={strides}, dilation_rate={dilation_rate}")
        self.groups = arguments.integer("groups", groups)
        for name, given, value in (("dilation_rate", dilation_rate, max(self.dilation_rate)),
                                   ("groups", groups, self.groups)):
            if name not in self.conv_arguments and value != 1:  # not silently ignored
                raise ValueError(
                    f"{type(self).__name__} supports only {name}=1. Received: {name}={given!r}")
        if self.filters % self.groups:
            raise ValueError(
                f"Expected groups to divide filters. Received: groups={groups}, "
                f"filters={filters}")
        self.activation = keras.activations.get(activation)
        self.use_bias = arguments.boolean("use_bias", use_bias)
        for name, value in objects.items():
            setattr(self, name, object_kind(name).get(value))
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # -- build helpers ------------------------------------------------------------------------

    @property
    def output_channels(self):
        """Channels of the output: `filters` (`filters·|G|` for group layers)."""
        return self.filters * self.bias_repeats

    def input_channels(self, input_shape):
        """The known channel count of `input_shape`, divisible by `groups`; ValueError naming
        the layer otherwise. Called first in `build`."""
        channels = input_shape[channel_axis(self.data_format)]
        if channels is None:
            raise ValueError(
                f"The channel dimension of the inputs to {type(self).__name__} "
                f"{self.name!r} must be known. Received: input_shape={tuple(input_shape)}")
        if channels % self.groups:
            raise ValueError(
                f"Expected groups to divide the input channels of {self.name!r}. Received: "
                f"groups={self.groups}, input channels={channels}")
        return channels

    def lock_channels(self, channels):
        """After build: an `InputSpec` refusing another channel count (`lock_channels`)."""
        lock_channels(self, channels, self.data_format)

    def add_kernel(self, name, shape, prefix="kernel"):
        """`add_conv_weight(self, name, shape, prefix)`."""
        return add_conv_weight(self, name, shape, prefix)

    def add_bias(self):
        """The `(filters,)` bias if `use_bias`, else None (set as `self.bias`)."""
        self.bias = self.add_kernel("bias", (self.filters,), prefix="bias") if self.use_bias else None
        return self.bias

    # -- forward ------------------------------------------------------------------------------

    def bias_and_activation(self, y):
        """`y` + the bias (in the compute dtype, each entry repeated `bias_repeats` times on the
        channel axis) if there is one, then the activation if there is one."""
        if self.bias is not None:
            bias = keras.ops.cast(self.bias, self.compute_dtype)
            if self.bias_repeats > 1:  # each entry n times (torch.compile traces no
                # `ops.repeat`: its repeat_interleave has a data-dependent output shape)
                bias = keras.ops.reshape(keras.ops.broadcast_to(
                    bias[:, None], (bias.shape[0], self.bias_repeats)), (-1,))
            shape = (1, -1, 1, 1) if self.data_format == "channels_first" else (1, 1, 1, -1)
            y = y + keras.ops.reshape(bias, shape)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def call(self, inputs):
        return self.bias_and_activation(self.convolution_op(inputs))

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        kernel_size = normalize_pair("kernel_size", self.kernel_size)
        spatial = input_shape[1:3] if self.data_format == "channels_last" else input_shape[2:4]
        if self.padding == "valid":
            for n, k, d, axis in zip(spatial, kernel_size, self.dilation_rate, ("rows", "cols")):
                window = (k - 1) * d + 1
                if n is not None and n < window:
                    dilated = f", dilated to {window}" if d > 1 else ""
                    raise ValueError(
                        f"Layer {self.name!r} ({type(self).__name__}): input {axis} ({n}) "
                        f"smaller than kernel_size ({k}{dilated}) with padding='valid'. "
                        f"Received: input_shape={input_shape}")
        return conv_output_shape(input_shape, self.output_channels, kernel_size, self.strides,
                                 self.padding, self.data_format, self.dilation_rate)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
            }
        )
        for name in self.conv_arguments:
            config[name] = getattr(self, name)
        config.update({name: object_kind(name).serialize(getattr(self, name))
                       for name in self.conv_objects})
        return config
