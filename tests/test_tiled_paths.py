"""What a network of jax's banded CPU paths holds for its backward pass.

jax's tiled ops (E4's fused layer `ops._jax_e4.fused_e4`, its tiled generation + aggregation
on the step-by-step path, the log-polar pooling + mixing by bands) each keep only their
input for the backward pass. In a network, XLA's compiled step must not hold more per layer:
a loop buffer made with `jnp.zeros` is a constant that XLA merged across layers and copied for
each layer at the start of the step, and a backward pass's pad of the saved input was merged
with the forward pass's and held from there; each held about one image per layer
(`ops._jax_e4.zeros_after`, `pad_after`).
"""

import importlib

import keras
import numpy as np
import pytest

from keras_convx.layers import E4Conv2D
from keras_convx.layers import LogPolarConv2D
from keras_convx.ops import group as gops
from tests import harness

BATCH, SIZE, CHANNELS = 4, 32, 32


def _temp_bytes(make_layer, depth):
    """XLA's temp bytes of a training step of a 1×1 stem and `depth` layers."""
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    hidden = keras.layers.Conv2D(CHANNELS, 1)(inputs)
    for _ in range(depth):
        hidden = make_layer()(hidden)
    x = np.random.default_rng(0).standard_normal((BATCH, SIZE, SIZE, CHANNELS)).astype("float32")
    return harness.jax_step_temp_bytes(keras.Model(inputs, hidden), x)


def _e4():
    return E4Conv2D(8, 5, reduction_ratio=1, slices=2)


def _log_polar():
    return LogPolarConv2D(CHANNELS, 9, rings=2, sectors=6, growth_rate=3.0, implementation="pool")


# (layer, images held per extra layer: the limit, then measured now / with the plain zeros)
CASES = {
    "e4-fused": (_e4, 2.0),  # 1.46 / 4.27
    "e4-step-by-step": (_e4, 5.0),  # 4.16 / 7.12 (it keeps its encoded map and more)
    "log-polar-bands": (_log_polar, 2.0),  # 1.77 / 3.33
}


@pytest.mark.skipif(not harness.jax_on_cpu(), reason="XLA's buffer assignment of jax's CPU bands")
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_extra_layer_holds_about_its_input(name, monkeypatch):
    """Four layers after a 1×1 stem against one: the temp bytes each extra layer adds, in
    images of its input (BATCH × SIZE² × CHANNELS float32), stay under the limit."""
    make_layer, limit = CASES[name]
    if name == "e4-step-by-step":  # E4's fused layer off: its tiled generation + aggregation
        fast_paths = importlib.import_module("keras_convx.ops._jax").FAST_PATHS
        monkeypatch.delitem(fast_paths, "e4_apply")
    if name == "log-polar-bands":  # bands at this size (the pooled tensor over 64 bands)
        monkeypatch.setattr(gops, "BAND_BYTES", 2**12)
    one, four = _temp_bytes(make_layer, 1), _temp_bytes(make_layer, 4)
    image = BATCH * SIZE * SIZE * CHANNELS * 4
    assert (four - one) / 3 < limit * image, ((four - one) / 3 / image, one, four)
