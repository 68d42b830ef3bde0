"""Robustness sweeps over every public image layer (tests/layer_cases.py) on this backend.

- Variable image sizes: a fully convolutional model on `keras.Input((None, None, C))` predicts
  and trains on two different image sizes in eager calls, traced steps (`jit_compile=False`)
  and compiled steps (`jit_compile=True`: XLA on TensorFlow and JAX, torch.compile on PyTorch;
  and TensorFlow's "auto"), and agrees with the eager layer on each size. TensorFlow relaxes
  the traced H, W to None on the retrace; torch.compile marks them dynamic on the second size.
- Built layers refuse inputs they were not built for (channel count, rank) with a ValueError
  naming the layer and what it expects.
"""

import keras
import numpy as np
import pytest

from keras_convx import layers
from tests import harness
from tests.layer_cases import CASES
from tests.layer_cases import COVERED

BACKEND = keras.backend.backend()
SIZES = ((8, 8), (11, 7))  # the second odd, non-square: exercises stride remainders
# On TensorFlow an uncompiled step is a traced tf.function ("auto" = XLA where it can); on
# jax and torch it runs op by op, as the eager layer calls of every test here already do.
JIT_MODES = [False, True, "auto"] if BACKEND == "tensorflow" else [True]


def _inputs(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _image(hw, channels, data_format, batch=2, seed=0):
    shape = (batch, *hw, channels) if data_format == "channels_last" else (batch, channels, *hw)
    return _inputs(shape, seed)


def test_every_public_image_layer_is_swept():
    graph = {"GraphDiffusion", "GraphHyperbolic"}  # node inputs: tests/test_pde.py
    public = {name for name in layers.__all__
              if isinstance(getattr(layers, name), type)
              and issubclass(getattr(layers, name), keras.layers.Layer)} - graph
    assert public == set(COVERED), f"not swept: {sorted(public - set(COVERED))}"


@pytest.mark.parametrize("jit_compile", JIT_MODES, ids=lambda j: f"jit={j}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_image_size_predict_and_fit(name, jit_compile):
    case = CASES[name]
    data_format = "channels_last"
    layer = case.make(data_format)
    inputs = keras.Input((None, None, case.channels))
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=jit_compile)
    for i, hw in enumerate(SIZES):
        x = _image(hw, case.channels, data_format, seed=i)
        expected = harness.to_numpy(layer(x, training=False))
        got = model.predict(x, verbose=0)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{name}, size {hw}, jit_compile={jit_compile}")
        loss = model.train_on_batch(x, np.zeros_like(got))
        assert np.isfinite(loss), f"{name}: non-finite loss on size {hw}"
        # After a step on this size, the compiled predict step still runs on it.
        assert model.predict_on_batch(x).shape == got.shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_image_size_channels_first_compiled(name):
    case = CASES[name]
    layer = case.make("channels_first")
    inputs = keras.Input((case.channels, None, None))
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=True)
    for i, hw in enumerate(SIZES):
        x = _image(hw, case.channels, "channels_first", seed=i)
        np.testing.assert_allclose(model.predict(x, verbose=0), harness.to_numpy(layer(x)),
                                   rtol=1e-4, atol=1e-4, err_msg=f"{name}, size {hw}")
        assert np.isfinite(model.train_on_batch(x, np.zeros_like(harness.to_numpy(layer(x)))))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_built_layer_refuses_another_channel_count(name, data_format):
    case = CASES[name]
    layer = case.make(data_format)
    layer(_image((8, 8), case.channels, data_format))
    wrong = _image((8, 8), 2 * case.channels, data_format)
    # Keras' InputSpec message ("expected axis 3 of input shape to have value 8") or the
    # layer's own ("was built for inputs with 8 channels"): the layer's name and the count.
    pattern = rf"{layer.name}.*(value {case.channels}\b|built for .*{case.channels} channels)"
    with pytest.raises(ValueError, match=pattern):
        layer(wrong)
    symbolic = keras.Input(wrong.shape[1:])
    with pytest.raises(ValueError, match=pattern):
        layer(symbolic)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rank_3_input_is_refused_naming_the_layer(name):
    case = CASES[name]
    layer = case.make("channels_last")
    with pytest.raises(ValueError, match=r"(ndim=4|rank 4|4-D)"):
        layer(_inputs((8, 8, case.channels), 0))
