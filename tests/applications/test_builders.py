"""Every application builder: channels_last whatever the user's default data format, and the
model named as asked."""

import keras
import numpy as np
import pytest

from keras_convx import applications
from keras_convx import graph

BUILDERS = {
    "e4net_mnist_rot": lambda **kw: applications.e4net_mnist_rot(**kw),
    "e4_resnet18": lambda **kw: applications.e4_resnet18(input_shape=(16, 16, 3),
                                                         widths=(2, 2, 2, 2), **kw),
    "lpsc_resnet20": lambda **kw: applications.lpsc_resnet20(input_shape=(16, 16, 3), depth=8,
                                                             **kw),
    "pde_net": lambda **kw: applications.pde_net(depth=2, width=4, **kw),
    "resnet_cifar": lambda **kw: applications.resnet_cifar(depth=14, input_shape=(16, 16, 3),
                                                           shared_bases=4, **kw),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_builders_are_channels_last_under_a_channels_first_default(builder):
    """With `keras.config.set_image_data_format("channels_first")` every layer of a builder's
    model is still channels_last (the layout the builders document; Keras' own Conv2D and
    pooling take the global default, so pde_net's 1×1 convs, the CIFAR ResNets' stems and
    e4net's group batch norms used to mix formats: wrong results or a failed build), the
    user's default is restored, and `name=` names the model (lpsc_resnet20 named it after
    its last block)."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = BUILDERS[builder](name="mine")
        assert keras.config.image_data_format() == "channels_first"
    finally:
        keras.config.set_image_data_format(previous)
    assert model.name == "mine"
    layers = graph.all_layers(model)
    assert {layer.data_format for layer in layers if hasattr(layer, "data_format")} == {
        "channels_last"}
    assert {layer.axis for layer in layers
            if isinstance(layer, keras.layers.BatchNormalization)} <= {-1, 3}
    x = np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype("float32")
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x, training=False))))
