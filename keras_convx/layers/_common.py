"""Building blocks shared by the layer families that are not convolutions (the conv layers
share `keras_convx.layers._conv_base.BaseConv2D`): input checks, weights, config objects.

Argument validation lives in `keras_convx.arguments` (one module for every public class); its
helpers are re-exported here under the names the layer files use.
"""

from keras_convx.arguments import DATA_FORMATS  # noqa: F401  (re-exported)
from keras_convx.arguments import boolean  # noqa: F401
from keras_convx.arguments import choice  # noqa: F401
from keras_convx.arguments import data_format  # noqa: F401
from keras_convx.arguments import integer  # noqa: F401
from keras_convx.arguments import is_int  # noqa: F401
from keras_convx.arguments import number  # noqa: F401
from keras_convx.arguments import odd_kernel_size  # noqa: F401
from keras_convx.layers._conv_base import CONV_OBJECTS  # noqa: F401
from keras_convx.layers._conv_base import add_conv_weight  # noqa: F401
from keras_convx.layers._conv_base import channel_axis  # noqa: F401
from keras_convx.layers._conv_base import lock_channels  # noqa: F401
from keras_convx.layers._conv_base import object_kind


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


def set_objects(layer, **objects):
    """Sets `layer.<name> = keras.<kind>.get(value)` for initializers, regularizers,
    constraints and activations, the kind read from the argument's name."""
    for name, value in objects.items():
        setattr(layer, name, object_kind(name).get(value))


def serialize_objects(layer, *names):
    """{name: keras.<kind>.serialize(layer.<name>)}: the config entries of `set_objects`."""
    return {name: object_kind(name).serialize(getattr(layer, name)) for name in names}
