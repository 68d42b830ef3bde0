"""CIFAR ResNets with deeply shared filter bases (the official SxUy models)."""

import keras

from keras_convx import arguments
from keras_convx.applications import _common
from keras_convx._registry import register
from keras_convx.applications._common import bn as _bn
from keras_convx.applications._common import conv3x3 as _conv3x3
from keras_convx.applications._common import he_fan_out as _he_fan_out
from keras_convx.layers.filter_basis import FilterBasis
from keras_convx.layers.shared_basis import SharedBasisConv2D
from keras_convx.layers import apply_global_orthonormal

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


@register
class ZeroPadShortcut(keras.layers.Layer):
    """The CIFAR ResNet "option A" shortcut: subsample by 2, zero-pad the channels.

    `y = pad(x[:, ::2, ::2, :], channels (pad, pad))` (channels_last), as He et al.'s CIFAR
    ResNets and the official shared-basis code: no parameters.

    Args:
        pad: int ≥ 0, zero channels added on each side.
        **kwargs: base layer arguments.
    """

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = arguments.integer("pad", pad, minimum=0)

    def call(self, inputs):
        x = inputs[:, ::2, ::2, :]
        return keras.ops.pad(x, ((0, 0), (0, 0), (0, 0), (self.pad, self.pad)))

    def compute_output_shape(self, input_shape):
        half = [None if n is None else -(-n // 2) for n in input_shape[1:3]]
        return (input_shape[0], *half, input_shape[3] + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def _shortcut(x, filters, strides, kind, name):
    if strides == 1 and x.shape[-1] == filters:
        return x
    if kind == "A":
        return ZeroPadShortcut((filters - x.shape[-1]) // 2, name=f"{name}_pad")(x)
    y = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                            kernel_initializer=_he_fan_out(), name=f"{name}_down")(x)
    return _bn(f"{name}_down_bn")(y)


def _block(x, filters, strides, shortcut, name, convs):
    """conv → BN → ReLU → conv → BN, + shortcut, ReLU; `convs` = the two conv layers."""
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(convs[0](x)))
    y = _bn(f"{name}_bn2")(convs[1](y))
    y = keras.layers.Add(name=f"{name}_add")([y, _shortcut(x, filters, strides, shortcut, name)])
    return keras.layers.ReLU(name=f"{name}_out")(y)


@_common.channels_last
def resnet_cifar(
    depth=32,
    num_classes=10,
    shared_bases=None,
    unique_bases=1,
    double_shared=False,
    shortcut="A",
    input_shape=(32, 32, 3),
    orthonormal_factor=10.0,
    basis_batch_norm=True,
    name=None,
):
    """CIFAR ResNet (depth 6n + 2) whose blocks share one filter basis per stage.

    The official "SxUy" models (Kang & Kim, NeurIPS 2021; github.com/ssregibility/Net_RL2,
    models/cifar10/resnet.py): a 3×3 conv stem (16 channels), three stages of n basic blocks
    with 16, 32, 64 channels, global average pooling and a dense classifier. The first block
    of every stage is an ordinary block (it changes stride and width); every other block
    replaces both 3×3 convs by `SharedBasisConv2D`s over the stage's basis of
    `shared_bases·2^g` filters plus `unique_bases·2^g` filters of their own (g = 0, 1, 2),
    each followed by its own basis batch norm and 1×1 coefficients.

    - `double_shared=False` ("SingleShared", the paper's S8U1/S16U1 ResNet-32/56 counts): both
      convs of a block use the stage's one basis.
    - `double_shared=True` ("DoubleShared", the later official code): conv1 and conv2 use two
      bases, initialised jointly orthogonal and regularised jointly (`FilterBasis(parts=2)`).

    `shared_bases=None` gives the plain ResNet of the same depth (the unshared baseline).
    The orthonormality penalty λ·Σ_g ‖B_g B_gᵀ − I‖²/Σ_g s_g² (λ = `orthonormal_factor`, 10 in
    every official run) is attached to the bases, so `compile/fit` minimise it.

    Trainable parameter counts equal the official PyTorch models' (BN moving statistics are
    not parameters there; `model.count_params()` counts them, so compare
    `sum(w.size for w in model.trainable_weights)`). E.g. ResNet-32: plain 464,154; S8U1
    150,666 (single) / 174,858 (double); S16U1 (single) 197,258.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110).
        num_classes: classifier width.
        shared_bases: s, filters of the stage-1 basis (doubled per stage), or None.
        unique_bases: u, the unique filters of each conv in stage 1 (doubled per stage).
        double_shared: two bases per stage (see above).
        shortcut: `"A"` (subsample + zero-pad channels, no parameters; CIFAR-10 official) or
            `"B"` (1×1 conv + BN projection).
        input_shape: channels_last image shape.
        orthonormal_factor: λ of the orthonormality penalty (0 disables it).
        basis_batch_norm: the basis batch norm of every shared conv (the paper: True).
        name: model name.

    Returns:
        An uncompiled `keras.Model` producing logits.

    Example:

    >>> model = resnet_cifar(32, shared_bases=8, unique_bases=1)   # ResNet32-S8U1
    >>> sum(int(w.size) for w in model.trainable_weights)   # doctest: +SKIP
    150666
    """
    if not arguments.is_int(depth) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"Expected depth = 6n + 2 with n >= 1 (20, 32, 44, 56, 110). Received: depth={depth!r}"
        )
    num_classes = arguments.integer("num_classes", num_classes)
    if shared_bases is not None:
        shared_bases = arguments.integer("shared_bases", shared_bases)
    unique_bases = arguments.integer("unique_bases", unique_bases, minimum=0)
    double_shared = arguments.boolean("double_shared", double_shared)
    shortcut = arguments.choice("shortcut", shortcut, SHORTCUTS, lower=False)
    orthonormal_factor = arguments.number("orthonormal_factor", orthonormal_factor, 0)
    blocks = (depth - 2) // 6
    if shared_bases is not None and blocks < 2:
        raise ValueError(
            "shared_bases needs depth >= 14: each stage's first block keeps its own convs, so "
            f"a depth-{depth} network has none to share. Received: depth={depth}, "
            f"shared_bases={shared_bases}")
    inputs = keras.Input(input_shape)
    x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn")(_conv3x3(16, 1, "stem_conv")(inputs)))
    bases = []
    for stage, filters in enumerate(STAGE_WIDTHS):
        basis = None
        if shared_bases is not None and blocks > 1:
            basis = FilterBasis(shared_bases * 2**stage, 3, parts=2 if double_shared else 1,
                                name=f"stage{stage + 1}_basis")
            bases.append(basis)
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            block_name = f"stage{stage + 1}_block{block + 1}"
            if basis is None or block == 0:
                convs = (_conv3x3(filters, strides, f"{block_name}_conv1"),
                         _conv3x3(filters, 1, f"{block_name}_conv2"))
            else:
                convs = tuple(
                    SharedBasisConv2D(
                        filters, basis, unique_bases=unique_bases * 2**stage,
                        basis_part=part if double_shared else 0,
                        basis_batch_norm=basis_batch_norm,
                        kernel_initializer=_he_fan_out(), name=f"{block_name}_conv{part + 1}",
                    )
                    for part in (0, 1)
                )
            x = _block(x, filters, strides, shortcut, block_name, convs)
    if bases and orthonormal_factor > 0:
        apply_global_orthonormal(bases, float(orthonormal_factor))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    if name is None:
        tag = "" if shared_bases is None else f"_s{shared_bases}u{unique_bases}"
        tag += "_double" if double_shared and shared_bases is not None else ""
        name = f"resnet{depth}{tag}"
    return keras.Model(inputs, outputs, name=name)
