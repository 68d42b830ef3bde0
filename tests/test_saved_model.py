"""Every public layer exports to a TensorFlow SavedModel with Keras' own `model.export`
(format "tf_saved_model", TensorFlow Serving's format) and serves there what the model
computes, at any image size where the model's input leaves it unknown.

- TensorFlow: unknown height and width, Keras' defaults.
- JAX (through jax2tf): unknown height and width with `jax2tf_kwargs={"with_gradient":
  False}` (jax2tf cannot trace a "valid" or strided convolution's gradient with symbolic
  sizes: Keras' own `Conv2D(3, padding="valid")` fails the same way), and with the defaults
  on a model of fixed size.
- PyTorch: Keras exports a SavedModel from torch only through torch_xla (not installed); a
  model trained on torch goes through its `.keras` file, loaded on TensorFlow or JAX
  (tests/test_portability.py).
"""

import os

import keras
import numpy as np
import pytest

from tests import harness
from tests import portability
from tests.layer_cases import ALL_LAYERS_CHANNELS
from tests.layer_cases import all_layers_model
from tests.layer_cases import image

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND == "torch", reason="Keras' SavedModel export from "
                                "torch needs torch_xla; torch models go through .keras files")


def _export_and_serve(model, path, sizes, data_format, **kwargs):
    import tensorflow as tf  # noqa: PLC0415

    portability.randomise(model, 0)
    model.export(path, format="tf_saved_model", verbose=False, **kwargs)
    artifact = tf.saved_model.load(path)  # (held: its variables die with it)
    for i, hw in enumerate(sizes):
        x = image(hw, ALL_LAYERS_CHANNELS, data_format, seed=i)
        got = artifact.serve(tf.constant(x))
        got = got if isinstance(got, (list, tuple)) else [got]
        expected = model(x, training=False)
        assert len(got) == len(expected)
        for name, g, e in zip(model.output_names, got, expected):
            np.testing.assert_allclose(np.asarray(g), harness.to_numpy(e), rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name}, size {hw}")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_every_layer_serves_any_image_size_from_a_saved_model(data_format, tmp_path):
    model, _ = all_layers_model(data_format)
    kwargs = {"jax2tf_kwargs": {"with_gradient": False}} if BACKEND == "jax" else {}
    # widths other than the adapters' channel counts (3, 8, 12, 16): Keras' channels_first
    # Conv2D was wrong eagerly on TensorFlow where they met, when the adapters ran it
    _export_and_serve(model, os.fspath(tmp_path / "model"), [(9, 10), (11, 7)], data_format,
                      **kwargs)


@pytest.mark.skipif(BACKEND != "jax", reason="jax2tf's default (with gradients) at a fixed size")
def test_fixed_size_model_exports_with_jax2tf_defaults(tmp_path):
    model, _ = all_layers_model("channels_last", size=(9, 9))
    _export_and_serve(model, os.fspath(tmp_path / "model"), [(9, 9)], "channels_last")


@pytest.mark.skipif(BACKEND != "jax", reason="a jax2tf limitation")
def test_jax2tf_defaults_fail_for_keras_own_conv_of_unknown_size(tmp_path):
    """Why the README asks for `with_gradient=False` from JAX at unknown sizes: jax2tf cannot
    trace the gradient of Keras' own "valid" `Conv2D` with symbolic sizes. When this starts
    to pass, the advice can go."""
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="gradients"):
        model.export(os.fspath(tmp_path / "model"), format="tf_saved_model", verbose=False)
