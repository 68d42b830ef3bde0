"""The every-family model that the distributed tests train (tests/distributed.py on 4
devices of one process, tests/multi_process.py over processes), and its data. No side
effects: importing it starts no backend set-up."""

import keras
import numpy as np

from keras_convx import layers

BATCH = 16  # the global batch


def every_family_model(groups="p4"):
    """Every layer family: one shared FilterBasis (with the globally normalised
    orthonormality penalty), synaptic masks, group batch norm; the group layers in
    channels_first, the others in channels_last. `groups`: a group name or a tuple of them,
    one branch of group layers per group (its batch norm named `group_bn_<group>`), the
    branches' invariant maps concatenated (one feature map for Grad-CAM to explain)."""
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    basis = layers.FilterBasis(4, 3, name="basis")
    layers.apply_global_orthonormal([basis], 1.0)
    inputs = keras.Input((12, 12, 1))
    x = layers.LogPolarConv2D(6, 5, rings=2, sectors=4, growth_rate=2.0)(inputs)
    x = layers.SharedBasisConv2D(6, basis, unique_bases=1, activation="relu",
                                 basis_bn_synchronized=True)(x)
    x = layers.SharedBasisConv2D(6, basis, unique_bases=1, activation="relu",
                                 basis_bn_synchronized=True)(x)
    x = layers.DiffusionConv2D(kernel_size=3, stable=True)(x)
    x = layers.SynapticConv2D(8, 3, strides=2, padding="same", activation="relu",
                              name="synaptic")(x)
    # The group layers run channels_first (both data formats are trained distributed).
    df = "channels_first"
    x = keras.layers.Permute((3, 1, 2))(x)
    maps = [_group_branch(x, group, df) for group in groups]
    x = maps[0] if len(maps) == 1 else keras.layers.Concatenate(axis=1)(maps)
    x = keras.layers.GlobalAveragePooling2D(data_format=df)(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def _group_branch(x, group, df):
    x = layers.GroupLiftConv2D(2, 3, group=group, padding="same", data_format=df)(x)
    x = layers.GroupBatchNormalization(group=group, synchronized=True, data_format=df,
                                       name=f"group_bn_{group}")(x)
    x = keras.layers.ReLU()(x)
    x = layers.E4Conv2D(2, 3, group=group, reduction_ratio=1, slices=2, data_format=df)(x)
    x = layers.GroupConv2D(2, 3, group=group, padding="same", activation="relu",
                           data_format=df)(x)
    return layers.GroupPooling(group=group, data_format=df)(x)


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * BATCH, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 5, 2 * BATCH).astype("int32")
    return x, y
