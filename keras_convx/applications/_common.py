"""Building blocks shared by the CIFAR ResNet builders (the official PyTorch defaults)."""

import functools

import keras


def channels_last(builder):
    """Decorates an application builder: its model is built channels_last (the layout every
    builder documents) whatever `keras.config.image_data_format()` the user set, which is
    restored after. Layers that take the global default (Keras' Conv2D, pooling) would
    otherwise mix formats with the ones pinned to channels_last."""

    @functools.wraps(builder)
    def build(*args, **kwargs):
        previous = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_last")
        try:
            return builder(*args, **kwargs)
        finally:
            keras.config.set_image_data_format(previous)

    return build


def he_fan_out():
    """N(0, 2 / (k_h·k_w·C_out)): PyTorch's kaiming_normal_(mode="fan_out") of the papers."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def conv3x3(filters, strides=1, name=None):
    return keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                               kernel_initializer=he_fan_out(), name=name)


def bn(name):
    """PyTorch's BatchNorm2d defaults: momentum 0.1 (Keras 0.9), eps 1e-5."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)
