"""E4-Net architectures (He et al., NeurIPS 2021): the MNIST-rot networks and the CIFAR ResNet-18s.

Layer structure and widths follow the official PyTorch code (`model/architecture.py`,
`model/architecture_large.py`, `model/resnet.py`); with `official_compat=True` the
trainable parameter counts equal the official models' (tests/applications/test_e4net.py).
"""

import keras

from keras_convx import arguments
from keras_convx.layers import E4Conv2D
from keras_convx.layers import GroupBatchNormalization
from keras_convx.layers import GroupConv2D
from keras_convx.layers import GroupLiftConv2D
from keras_convx.layers import GroupPooling
from keras_convx.ops import group as gops

_MNIST_SIZES = {
    # fields, kernel_size, reduction_ratio, fields per slice (official `groups`)
    "normal": (16, 5, 1, 8),
    "large": (24, 5, 2, 2),
}
_RESNET_WIDTHS = {"p4": (32, 64, 128, 256), "p4m": (22, 44, 88, 176)}


def _bn(group, name):
    # PyTorch BatchNorm3d defaults: momentum 0.1 (Keras 0.9), eps 1e-5.
    return GroupBatchNormalization(group, momentum=0.9, epsilon=1e-5, name=name)


def e4net_mnist_rot(
    size="normal",
    input_shape=(28, 28, 1),
    num_classes=10,
    group="p4",
    dropout=0.2,
    official_compat=False,
    name=None,
):
    """E4-Net for MNIST-rot.

    Lifting 3×3 conv → group BN → ReLU; E4 → BN → ReLU; max pool 2; 2 × [E4 → BN → ReLU →
    Dropout]; max pool 2; 3 × [E4 → BN → ReLU → Dropout]; group max pool; global max pool;
    Dense. `"normal"`: 16 fields, k = 5, r = 1, 2 slices (official 98.71% on MNIST-rot);
    `"large"`: 24 fields, k = 5, r = 2, 12 slices (98.81%).

    Args:
        size: `"normal"` or `"large"`.
        input_shape: channels_last `(rows, cols, channels)`; square with rows divisible by 4
            for exact invariance.
        num_classes: int.
        group: `"p4"` (the official networks) or `"p4m"`.
        dropout: float, dropout rate.
        official_compat: bool, untied GroupNorm affine in the E4 layers (the official
            parameterisation; not exactly equivariant once trained).
        name: model name.

    Returns:
        An uncompiled `keras.Model` producing logits.

    Example:

    >>> model = e4net_mnist_rot("normal")
    >>> model.output_shape
    (None, 10)
    """
    size = arguments.choice("size", size, tuple(_MNIST_SIZES))
    group = gops.check_group(group)
    fields, k, r, per_slice = _MNIST_SIZES[size]

    def e4(i):
        return E4Conv2D(fields, k, group=group, reduction_ratio=r, slices=fields // per_slice,
                        official_compat=official_compat, data_format="channels_last", name=f"e4_{i}")

    inputs = keras.Input(shape=input_shape)
    x = GroupLiftConv2D(fields, 3, group=group, use_bias=False, data_format="channels_last",
                        name="lift")(inputs)
    x = keras.layers.ReLU()(_bn(group, "bn_1")(x))
    for i in range(2, 8):
        x = e4(i)(x)
        x = keras.layers.ReLU()(_bn(group, f"bn_{i}")(x))
        if i > 2:
            x = keras.layers.Dropout(dropout)(x)
        if i in (2, 4):
            x = keras.layers.MaxPooling2D(2, data_format="channels_last")(x)
    x = GroupPooling(group, data_format="channels_last", name="group_pool")(x)
    x = keras.layers.GlobalMaxPooling2D(data_format="channels_last")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"e4net_mnist_rot_{size}")


def e4_resnet18(
    group="p4",
    num_classes=10,
    e4=True,
    input_shape=(32, 32, 3),
    dropout=0.2,
    kernel_size=3,
    reduction_ratio=2,
    fields_per_slice=2,
    widths=None,
    official_compat=False,
    name=None,
):
    """Group-equivariant CIFAR ResNet-18, with (`e4=True`) or without E4 layers.

    Stem: lifting 3×3 conv → group BN → ReLU. Four stages of two basic blocks (stage widths
    32/64/128/256 fields for p4, 22/44/88/176 for p4m; strides 1, 2, 2, 2). Block: group
    3×3 conv → Dropout → BN → ReLU → [group 3×3 conv, or E4(k, r, `fields_per_slice`)] → BN,
    plus the shortcut (1×1 group conv + BN where the shape changes), then ReLU. As in the
    official code a strided group conv is a stride-1 conv followed by 2×2 max pooling, which
    keeps the network exactly equivariant. Head: group max pool, global average pool,
    Dense. Reported CIFAR-10: p4-R18 92.47, p4-E4R18 93.58, p4m-R18 94.17, p4m-E4R18 95.04.

    Args:
        group: `"p4"` or `"p4m"`.
        num_classes: int.
        e4: bool, E4 layers as each block's second conv (E4R18) or group convs (R18).
        input_shape: channels_last `(rows, cols, channels)`.
        dropout: float, dropout rate inside the blocks.
        kernel_size, reduction_ratio, fields_per_slice: the E4 layers' k, r and fields per
            generated kernel (official: 3, 2, 2).
        widths: optional 4 stage widths (fields) replacing the official ones.
        official_compat: bool, untied GroupNorm affine in the E4 layers.
        name: model name.

    Returns:
        An uncompiled `keras.Model` producing logits.
    """
    group = gops.check_group(group)
    widths = tuple(widths or _RESNET_WIDTHS[group])
    if len(widths) != 4:
        raise ValueError(f"Expected widths to be 4 stage widths. Received: widths={widths!r}")
    df = "channels_last"

    def gconv(fields, k, label):
        return GroupConv2D(fields, k, group=group, use_bias=False, data_format=df, name=label)

    inputs = keras.Input(shape=input_shape)
    x = GroupLiftConv2D(widths[0], 3, group=group, use_bias=False, data_format=df, name="stem")(inputs)
    x = keras.layers.ReLU()(_bn(group, "stem_bn")(x))
    in_fields = widths[0]
    for stage, (fields, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        for block in (1, 2):
            prefix = f"stage{stage}_block{block}"
            s = stride if block == 1 else 1
            y = gconv(fields, 3, f"{prefix}_conv1")(x)
            if s > 1:
                y = keras.layers.MaxPooling2D(s, data_format=df)(y)
            y = keras.layers.Dropout(dropout)(y)
            y = keras.layers.ReLU()(_bn(group, f"{prefix}_bn1")(y))
            if e4:
                if fields % fields_per_slice:
                    raise ValueError(
                        f"fields_per_slice={fields_per_slice} must divide every stage width "
                        f"(stage {stage} has {fields})."
                    )
                y = E4Conv2D(fields, kernel_size, group=group, reduction_ratio=reduction_ratio,
                             slices=fields // fields_per_slice, official_compat=official_compat,
                             data_format=df, name=f"{prefix}_e4")(y)
            else:
                y = gconv(fields, 3, f"{prefix}_conv2")(y)
            y = _bn(group, f"{prefix}_bn2")(y)
            shortcut = x
            if s != 1 or in_fields != fields:
                shortcut = gconv(fields, 1, f"{prefix}_shortcut")(x)
                if s > 1:
                    shortcut = keras.layers.MaxPooling2D(s, data_format=df)(shortcut)
                shortcut = _bn(group, f"{prefix}_shortcut_bn")(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            in_fields = fields
    x = GroupPooling(group, data_format=df, name="group_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=df)(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    default = f"{group}_{'e4' if e4 else ''}resnet18"
    return keras.Model(inputs, outputs, name=name or default)
