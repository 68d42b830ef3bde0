"""Argument validation shared by the layer families (clear errors before any work)."""

import keras
import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


def choice(name, value, accepted):
    """Returns `value.lower()` if it is one of `accepted`; ValueError naming `name` otherwise."""
    if not isinstance(value, str) or value.lower() not in accepted:
        raise ValueError(f"Expected {name} to be one of {list(accepted)}. Received: {name}={value!r}")
    return value.lower()


def data_format(value):
    """`None` → `keras.config.image_data_format()`; validated otherwise."""
    return choice("data_format", value or keras.config.image_data_format(), DATA_FORMATS)


def channel_axis(data_format):
    """The channel axis of a 4-D tensor: 3 for "channels_last", 1 for "channels_first"."""
    return 3 if data_format == "channels_last" else 1


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def integer(name, value, minimum=1):
    """An int ≥ `minimum`: TypeError if not an int, ValueError if too small, naming `name`."""
    if not is_int(value):
        raise TypeError(f"Expected {name} to be an int. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Expected {name} >= {minimum}. Received: {name}={value}")
    return int(value)


def odd_kernel_size(value):
    """An odd int ≥ 1 (or a pair of equal odd ints) → int; ValueError naming kernel_size."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if value[0] != value[1]:
            raise ValueError(
                "Expected kernel_size to be square (rotations map a k×k window onto itself). "
                f"Received: kernel_size={value!r}"
            )
        value = value[0]
    k = integer("kernel_size", value)
    if k % 2 == 0:
        raise ValueError(
            f"Expected kernel_size to be an odd int (the group acts about the window's centre "
            f"pixel). Received: kernel_size={value!r}"
        )
    return k


def check_input(layer, shape, ranks, axis, channels, what="inputs"):
    """ValueError naming `layer` unless `shape` has one of `ranks` axes and `channels` on
    `axis` (a known size only: None passes). For layers whose inputs a Keras `InputSpec`
    cannot describe (state pairs, graph triples); raised before any work."""
    shape = tuple(shape)
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if len(shape) not in ranks:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) expects {what} of rank "
            f"{' or '.join(map(str, ranks))}. Received: shape={shape}")
    if shape[axis] is not None and shape[axis] != channels:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) was built for {what} with "
            f"{channels} channels (axis {axis % len(shape)}). Received: shape={shape}")


def lock_channels(layer, channels, data_format):
    """After build: a Keras `InputSpec` that refuses 4-D inputs with another channel count
    (Keras' own message names the layer, the axis and the expected value)."""
    layer.input_spec = keras.layers.InputSpec(ndim=4, axes={channel_axis(data_format): channels})


def boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected {name} to be a bool. Received: {name}={value!r}")
    return bool(value)


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


def _kind(name):
    for suffix, module in _KINDS:
        if name.endswith(suffix):
            return module
    raise KeyError(name)


def set_objects(layer, **objects):
    """Sets `layer.<name> = keras.<kind>.get(value)` for initializers, regularizers,
    constraints and activations, the kind read from the argument's name."""
    for name, value in objects.items():
        setattr(layer, name, _kind(name).get(value))


def serialize_objects(layer, *names):
    """{name: keras.<kind>.serialize(layer.<name>)}: the config entries of `set_objects`."""
    return {name: _kind(name).serialize(getattr(layer, name)) for name in names}


def add_conv_weight(layer, name, shape, prefix="kernel"):
    """`layer.add_weight` with the layer's `<prefix>_initializer/_regularizer/_constraint`."""
    return layer.add_weight(
        name=name,
        shape=shape,
        initializer=getattr(layer, f"{prefix}_initializer"),
        regularizer=getattr(layer, f"{prefix}_regularizer"),
        constraint=getattr(layer, f"{prefix}_constraint"),
    )


def add_bias(layer, size):
    """The `(size,)` bias of a conv layer if `layer.use_bias`, else None."""
    return add_conv_weight(layer, "bias", (size,), prefix="bias") if layer.use_bias else None


def bias_and_activation(layer, y):
    """`y + layer.bias` (on the channel axis of `layer.data_format`, in the compute dtype) if
    the layer has a bias, then `layer.activation` if it has one: the tail of every conv."""
    if layer.bias is not None:
        shape = (1, -1, 1, 1) if layer.data_format == "channels_first" else (1, 1, 1, -1)
        y = y + keras.ops.reshape(keras.ops.cast(layer.bias, layer.compute_dtype), shape)
    if layer.activation is not None:
        y = layer.activation(y)
    return y
