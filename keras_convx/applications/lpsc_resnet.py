"""CIFAR ResNet-20 with log-polar space convolutions (the paper's CIFAR models)."""

import keras

from keras_convx import arguments
from keras_convx.applications import _common
from keras_convx.applications._common import bn as _bn
from keras_convx.applications._common import conv3x3 as _conv3x3
from keras_convx.applications._common import he_fan_out as _he_fan_out
from keras_convx.layers.log_polar import LogPolarConv2D

VARIANTS = ("stem", "cc")


def _lpsc(filters, kernel_size, rings, sectors, growth_rate, strides, implementation, name):
    return LogPolarConv2D(filters, kernel_size, rings=rings, sectors=sectors, growth_rate=growth_rate,
                          strides=strides, implementation=implementation,
                          kernel_initializer=_he_fan_out(), name=name)


def _basic_block(x, filters, strides, name, first_conv=None):
    shortcut = x
    in_channels = x.shape[-1]
    y = first_conv(x) if first_conv is not None else _conv3x3(filters, strides, f"{name}_conv1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    y = _bn(f"{name}_bn2")(_conv3x3(filters, 1, f"{name}_conv2")(y))
    if strides != 1 or in_channels != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                       kernel_initializer=_he_fan_out(), name=f"{name}_down")(x)
        shortcut = _bn(f"{name}_down_bn")(shortcut)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([y, shortcut]))


@_common.channels_last
def lpsc_resnet20(input_shape=(32, 32, 3), num_classes=10, variant="stem", depth=20,
                  implementation="auto", name=None):
    """CIFAR ResNet (default depth 20) with log-polar space convolutions.

    Variants (the official PyTorch models' structure):

    - `"stem"`: the 3×3 stem conv becomes a 9×9 LPSC with (rings, sectors, growth) = (2, 6, 3)
      and a centre weight, 16 filters; then three stages of basic blocks (16, 32, 64 filters,
      1×1-conv + BN projection shortcuts), global average pooling and a dense classifier.
    - `"cc"` ("LPSC-CC"): the stem and the first convolution of every block of the first
      stage concatenate a 3×3 conv on half of the output channels and a 5×5 LPSC (2, 6, 3)
      with a centre weight on the other half.

    The official stem adds two biases (the tile conv's and the centre conv's); here one bias
    stands for both, so the trainable parameter count is lower by the redundant one.

    Args:
        input_shape: channels_last image shape, default CIFAR (32, 32, 3).
        num_classes: classifier width.
        variant: `"stem"` or `"cc"`.
        depth: 6n + 2 (20, 32, 44, 56, 110).
        implementation: passed to every `LogPolarConv2D`.
        name: model name.

    Returns:
        An uncompiled `keras.Model` with softmax-free logits.

    Example:

    >>> model = lpsc_resnet20(num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    variant = arguments.choice("variant", variant, VARIANTS)
    depth = arguments.integer("depth", depth, minimum=8)
    if (depth - 2) % 6:
        raise ValueError(f"Expected depth = 6n + 2 with n >= 1 (20, 32, 44, 56, 110). Received: depth={depth!r}")
    num_classes = arguments.integer("num_classes", num_classes)
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    if variant == "stem":
        x = _lpsc(16, 9, 2, 6, 3.0, 1, implementation, "stem_lpsc")(inputs)
    else:
        x = keras.layers.Concatenate(name="stem_concat")([
            _conv3x3(8, 1, "stem_conv")(inputs),
            _lpsc(8, 5, 2, 6, 3.0, 1, implementation, "stem_lpsc")(inputs),
        ])
    x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            block_name = f"stage{stage + 1}_block{block + 1}"
            first = None
            if variant == "cc" and stage == 0:
                def first(t, prefix=block_name, strides=strides, filters=filters):
                    return keras.layers.Concatenate(name=f"{prefix}_concat")([
                        _conv3x3(filters // 2, strides, f"{prefix}_conv1")(t),
                        _lpsc(filters // 2, 5, 2, 6, 3.0, strides, implementation, f"{prefix}_lpsc1")(t),
                    ])
            x = _basic_block(x, filters, strides, block_name, first)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"lpsc_resnet{depth}_{variant}")
