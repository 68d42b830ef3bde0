"""The harness itself: it passes a correct layer and catches each kind of broken one."""

import os

import keras
import numpy as np
import pytest

from keras_convx._registry import register
from keras_convx.ops.core import conv2d
from tests import harness


@register
class ScaleConv(keras.layers.Layer):
    """A correct reference layer: per-channel scale then a 3×3 conv, both data formats."""

    def __init__(self, filters, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.data_format = data_format or keras.config.image_data_format()

    def build(self, input_shape):
        axis = -1 if self.data_format == "channels_last" else 1
        cin = input_shape[axis]
        self.scale = self.add_weight(name="scale", shape=(cin,), initializer="ones")
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, cin, self.filters))

    def _scaled(self, x):
        if self.data_format == "channels_last":
            return x * self.scale
        return x * keras.ops.reshape(self.scale, (-1, 1, 1))

    def call(self, x):
        return conv2d(self._scaled(x), self.kernel, padding="same", data_format=self.data_format)

    def compute_output_shape(self, input_shape):
        if self.data_format == "channels_last":
            return (*input_shape[:-1], self.filters)
        return (input_shape[0], self.filters, *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "data_format": self.data_format}


def scale_conv_oracle(x, w):
    """y[b,i,j,o] = Σ_{u,v,c} x[b,i+u-1,j+v-1,c]·scale[c]·kernel[u,v,c,o] (zero padding)."""
    xs = np.pad(x * w["scale"], ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    y = np.zeros((x.shape[0], h, wd, w["kernel"].shape[-1]))
    for u in range(3):
        for v in range(3):
            y += np.einsum("bijc,co->bijo", xs[:, u:u + h, v:v + wd], w["kernel"][u, v])
    return y


@register
class ForgetfulConfig(ScaleConv):
    def get_config(self):
        config = super().get_config()
        config.pop("filters")
        return config


@register
class LyingShape(ScaleConv):
    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters + 1)


@register
class UnsavedState(ScaleConv):
    """Keeps a random offset in a Python attribute: lost on save/load."""

    def build(self, input_shape):
        super().build(input_shape)
        self.offset = np.float32(np.random.default_rng().standard_normal())

    def call(self, x):
        return super().call(x) + self.offset


@register
class IgnoresDataFormat(ScaleConv):
    def call(self, x):
        return conv2d(self._scaled(x), self.kernel, padding="same", data_format="channels_last")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)


@register
class Float16Overflow(ScaleConv):
    def call(self, x):
        # exp(12) ≈ 1.6e5: fine in float32 and bfloat16, inf in float16.
        return super().call(x) + keras.ops.exp(keras.ops.zeros((), dtype=x.dtype) + 12.0)


@register
class LossyHalfPrecision(ScaleConv):
    """Finite and of the right dtype under mixed precision, but 5% off its float32 output
    (what a wrong cast or a low-precision constant in the middle does)."""

    def call(self, x):
        y = super().call(x)
        return y if keras.backend.standardize_dtype(y.dtype) == "float32" else y * 1.05


@register
class FrozenByMistake(ScaleConv):
    def call(self, x):
        return keras.ops.stop_gradient(super().call(x))


@register
class WrongGradient(ScaleConv):
    """Right forward, wrong backward: the scale gets no gradient."""

    def _scaled(self, x):
        return x * keras.ops.stop_gradient(self.scale)


SHAPE = (2, 6, 6, 3)


def test_correct_layer_passes():
    harness.run_layer_test(ScaleConv, {"filters": 4}, SHAPE, expected_output_shape=(2, 6, 6, 4),
                           expected_num_trainable_weights=2, expected_num_params=3 + 3 * 3 * 3 * 4)


def test_correct_layer_matches_oracle_forward_and_gradients():
    layer = ScaleConv(4)
    layer.build(SHAPE)
    layer.scale.assign(np.linspace(0.5, 1.5, 3).astype("float32"))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    harness.assert_matches_oracle(layer, x, scale_conv_oracle)


@pytest.mark.parametrize(
    "cls, check",
    [
        (ForgetfulConfig, "config"),
        (LyingShape, "eager"),
        (UnsavedState, "saving"),
        (IgnoresDataFormat, "data_format"),
        (Float16Overflow, "mixed_precision"),
        (LossyHalfPrecision, "mixed_precision"),
        (FrozenByMistake, "fit"),
        (WrongGradient, "fit"),
    ],
)
def test_broken_layer_fails_the_named_check(cls, check):
    with pytest.raises(harness.HarnessError, match=rf"\[{check}\]"):
        harness.run_layer_test(cls, {"filters": 4}, SHAPE)


def test_wrong_parameter_count_fails():
    with pytest.raises(harness.HarnessError, match=r"\[build\]"):
        harness.run_layer_test(ScaleConv, {"filters": 4}, SHAPE, expected_num_params=1)


def test_oracle_helper_catches_wrong_forward():
    layer = ScaleConv(4)
    layer.build(SHAPE)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")

    def off_by_a_bit(x, w):
        return scale_conv_oracle(x, w) + 1e-3

    with pytest.raises(AssertionError, match="forward"):
        harness.assert_matches_oracle(layer, x, off_by_a_bit)


def test_oracle_helper_catches_wrong_gradient():
    layer = WrongGradient(4)
    layer.build(SHAPE)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    with pytest.raises(AssertionError, match="gradient of scale"):
        harness.assert_matches_oracle(layer, x, scale_conv_oracle)


def test_oracle_helper_uses_analytic_vjp_when_given():
    layer = ScaleConv(2)
    layer.build((1, 4, 4, 1))
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 1)).astype("float32")

    def oracle(x, w):
        return scale_conv_oracle(x, w)

    def bad_vjp(x, w, cot):
        return np.zeros_like(x), {k: np.zeros_like(v) for k, v in w.items()}

    oracle.vjp = bad_vjp
    with pytest.raises(AssertionError, match="input gradient"):
        harness.assert_matches_oracle(layer, x, oracle)


def test_backend_gradients_of_a_known_function():
    x = np.array([1.0, -2.0, 3.0], "float32")
    (g,) = harness.backend_gradients(lambda t: keras.ops.sum(t**3), [x])
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-6)


def test_finite_differences_of_a_non_contiguous_array():
    # A Fortran-ordered (or transposed) weight must still be perturbed in place.
    w = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    grad = harness.finite_difference_gradient(lambda a: a**2, [w], 0, np.ones((2, 3)))
    np.testing.assert_allclose(grad, 2 * w, rtol=1e-6)


# Modules whose absence turns tests into skips (`pytest.importorskip`): the "export" and
# "dev" extras that `make test` installs.
_SKIP_IF_MISSING = ("onnx", "onnxruntime", "tf2onnx", "ai_edge_litert", "matplotlib", "torch")


@pytest.mark.skipif(not os.environ.get("KERAS_CONVX_REQUIRE_EXTRAS"),
                    reason="checked under `make test` (KERAS_CONVX_REQUIRE_EXTRAS=1), which "
                    "installs every extra")
def test_make_test_has_what_the_conditional_skips_need():
    """Under `make test` (CI) no test may skip for a missing extra or an untracked allocator:
    a broken install would otherwise show as skips, not failures."""
    import importlib  # noqa: PLC0415

    missing = []
    for name in _SKIP_IF_MISSING:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    assert not missing, f"`make test` lacks {missing}: the tests needing them would skip"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        if not tf.config.list_logical_devices("GPU"):  # the memory tests measure the CPU
            tf.config.experimental.reset_memory_stats("CPU:0")  # raises where untracked
