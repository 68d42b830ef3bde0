"""One small configuration of every public image layer, for the sweeps that run across all of
them (tests/test_robustness.py: variable image sizes, traced and compiled steps, wrong
channel counts, wrong ranks, both data formats; tests/test_saved_model.py: SavedModel export),
and `all_layers_model`, one model holding every case.

Each case is `make(data_format) -> layer` and the input channel count it is built for. The
shapes are tiny on purpose: these tests sweep every layer × backend × step kind, and the
numerics of each family are checked against its oracle elsewhere. `stride` says how much the
layer shrinks the image (so a test can pick sizes that exercise odd remainders).
"""

import dataclasses

import keras
import numpy as np

from keras_convx import layers


@dataclasses.dataclass(frozen=True)
class Case:
    make: object  # data_format -> layer
    channels: int


def _lpsc(**kw):
    return lambda df: layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0,
                                            data_format=df, **kw)


CASES = {
    "LogPolarConv2D-dense": Case(_lpsc(implementation="dense"), 3),
    "LogPolarConv2D-pool": Case(_lpsc(implementation="pool"), 3),
    "LogPolarConv2D-pool-s2": Case(_lpsc(implementation="pool", strides=2), 3),
    "LogPolarConv2D-max": Case(_lpsc(pooling="max"), 3),
    "LogPolarConv2D-valid-s2": Case(_lpsc(padding="valid", strides=2), 3),
    "GroupLiftConv2D": Case(lambda df: layers.GroupLiftConv2D(2, 3, group="p4", data_format=df), 3),
    "GroupConv2D-p4m-s2": Case(
        lambda df: layers.GroupConv2D(2, 3, group="p4m", strides=2, data_format=df), 16),
    "GroupConv2D-c8": Case(lambda df: layers.GroupConv2D(2, 3, group="c8", data_format=df), 16),
    "GroupBatchNormalization": Case(
        lambda df: layers.GroupBatchNormalization("p4", data_format=df), 8),
    "GroupPooling": Case(lambda df: layers.GroupPooling("p4", data_format=df), 8),
    "E4Conv2D": Case(lambda df: layers.E4Conv2D(2, 3, group="p4", reduction_ratio=1, slices=2,
                                                data_format=df), 8),
    "E4Conv2D-d3-s2": Case(lambda df: layers.E4Conv2D(2, 3, group="d3", reduction_ratio=1, slices=2,
                                                      strides=2, data_format=df), 12),
    "FilterBasis": Case(lambda df: layers.FilterBasis(4, 3, data_format=df), 3),
    "SharedBasisConv2D": Case(
        lambda df: layers.SharedBasisConv2D(4, layers.FilterBasis(4, 3), unique_bases=1,
                                            data_format=df), 3),
    "DiffusionConv2D": Case(lambda df: layers.DiffusionConv2D(kernel_size=3, data_format=df), 3),
    "DiffusionConv2D-1x1": Case(lambda df: layers.DiffusionConv2D(data_format=df), 3),
    "HyperbolicConv2D": Case(lambda df: layers.HyperbolicConv2D(kernel_size=3, data_format=df), 3),
    "SynapticConv2D": Case(lambda df: layers.SynapticConv2D(4, 3, data_format=df), 3),
}

# Every public image layer class must appear in some case (checked by a test).
COVERED = sorted({name.split("-")[0] for name in CASES})

ALL_LAYERS_CHANNELS = 8


def image(hw, channels, data_format, batch=2, seed=0):
    """A float32 standard-normal batch of (H, W) = `hw` images in `data_format`."""
    shape = (batch, *hw, channels) if data_format == "channels_last" else (batch, channels, *hw)
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def conv1x1(channels, data_format, name=None, dtype=None):
    """A 1×1 Conv2D to `channels`, run channels_last: TensorFlow's CPU convolution has no NCHW
    kernel without oneDNN, which TensorFlow leaves off by default on some x86 CPUs (on an
    AVX2-only AMD EPYC Keras' channels_first `Conv2D` raised UnimplementedError; with oneDNN
    on, it still did in mixed bfloat16)."""
    conv = keras.layers.Conv2D(channels, 1, name=name, dtype=dtype)
    if data_format == "channels_last":
        return conv
    return keras.Sequential(
        [keras.layers.Permute((2, 3, 1)), conv, keras.layers.Permute((3, 1, 2))],
        name=f"{name}_cf" if name else None)


def all_layers_model(data_format, size=(None, None)):
    """Every case on its own branch of one model: a 1×1 Conv2D (`conv1x1`) adapts the shared
    8-channel input to the case's channel count. `size`: the input's (H, W), unknown by default.
    Returns (model, eager function of x)."""
    if data_format == "channels_last":
        shape = (*size, ALL_LAYERS_CHANNELS)
    else:
        shape = (ALL_LAYERS_CHANNELS, *size)
    inputs = keras.Input(shape)
    branches, outputs = [], []
    for name in sorted(CASES):
        case = CASES[name]
        adapter = conv1x1(case.channels, data_format, f"adapt_{name}".replace("-", "_"))
        layer = case.make(data_format)
        branches.append((adapter, layer))
        outputs.append(keras.layers.Identity(name=name.replace("-", "_"))(layer(adapter(inputs))))
    model = keras.Model(inputs, outputs)

    def eager(x):
        return [layer(adapter(x), training=False) for adapter, layer in branches]

    return model, eager
