"""PDE networks: a deep stack of diffusive or hyperbolic PDE layers (PDE-GCN's architecture
on an image grid)."""

import keras

from keras_convx import arguments
from keras_convx.applications import _common
from keras_convx.layers.pde import DiffusionConv2D
from keras_convx.layers.pde import HyperbolicConv2D

KINDS = ("diffusion", "hyperbolic")


@_common.channels_last
def pde_net(
    input_shape=(8, 8, 1),
    num_classes=10,
    depth=16,
    width=32,
    kind="diffusion",
    kernel_size=1,
    step_size=0.1,
    activation="tanh",
    stable=True,
    diffusion_blend=False,
    dropout=0.0,
    include_top=True,
    pooling="flatten",
    name=None,
):
    """A PDE network: opening 1×1 conv, `depth` PDE layers, closing layers.

    The structure of PDE-GCN (Eliasof, Haber & Treister, NeurIPS 2021) on an image grid:
    dropout → opening 1×1 conv + ReLU (to `width` channels) → `depth` `DiffusionConv2D` or
    `HyperbolicConv2D` layers, each with its own K initialised to the identity → dropout →
    closing 1×1 conv + ReLU. With `include_top`, a softmax dense classifier follows, on the
    flattened map (`pooling="flatten"`, default) or on its global average (`"avg"`; note a
    diffusion step conserves each channel's spatial mean — Neumann boundary, divergence form —
    so there the ReLU of the closing conv is what lets pooling see the PDE layers' work). Hyperbolic stacks pass the state pair `[f_l, f_{l−1}]` from layer to
    layer (`return_state=True` on all but the last).

    Args:
        input_shape: (H, W, C) of the images (channels_last).
        num_classes: classes of the softmax classifier (with `include_top`).
        depth: int ≥ 1, the number of PDE layers.
        width: int ≥ 1, channels of the PDE layers.
        kind: "diffusion" (PDE-GCN_D) or "hyperbolic" (PDE-GCN_H).
        kernel_size: odd int, size of each layer's K (1: channel mixing, as PDE-GCN).
        step_size: h of every layer.
        activation: σ of the PDE layers.
        stable: bool, cap every layer's step by its stability bound (see `DiffusionConv2D`).
        diffusion_blend: bool, hyperbolic layers use the learned diffusion/wave blend.
        dropout: float in [0, 1), the rate of the two dropout layers.
        include_top: bool, add the classifier; else the output is the closing conv's map.
        pooling: "flatten" or "avg", how the classifier reads the map.
        name: model name.

    Returns:
        An uncompiled `keras.Model`.

    Example:

    >>> model = pde_net((8, 8, 1), 10, depth=32, kind="hyperbolic")
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    """
    depth = arguments.integer("depth", depth)
    width = arguments.integer("width", width)
    kind = arguments.choice("kind", kind, KINDS)
    arguments.boolean("include_top", include_top)
    pooling = arguments.choice("pooling", pooling, ("flatten", "avg"))
    dropout = arguments.number("dropout", dropout, 0, 1, exclusive_maximum=True)
    if include_top:
        num_classes = arguments.integer("num_classes", num_classes)
    pde_kwargs = dict(kernel_size=kernel_size, step_size=step_size, activation=activation,
                      stable=stable, data_format="channels_last")

    inputs = keras.Input(input_shape)
    x = keras.layers.Dropout(dropout, name="input_dropout")(inputs) if dropout else inputs
    x = keras.layers.Conv2D(width, 1, activation="relu", name="open")(x)
    if kind == "diffusion":
        for i in range(depth):
            x = DiffusionConv2D(name=f"pde_{i}", **pde_kwargs)(x)
    else:
        for i in range(depth):
            x = HyperbolicConv2D(return_state=i < depth - 1, diffusion_blend=diffusion_blend,
                                 name=f"pde_{i}", **pde_kwargs)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(width, 1, activation="relu", name="close")(x)
    if include_top:
        if pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        else:
            x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"pde_net_{kind}_{depth}")
