"""SynapticConv2D: oracle, Conv2D equivalence, masks, penalty, harness, bad arguments."""

import keras
import numpy as np
import pytest

from keras_convx import pruning
from keras_convx.layers import SynapticConv2D
from tests import harness
from tests.oracles import adjoint
from tests.oracles import synaptic as oracle


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def _layer(filters=6, channels=4, seed=0, mask_fraction=0.3, **kwargs):
    layer = SynapticConv2D(filters, kwargs.pop("kernel_size", 3), **kwargs)
    fmt = kwargs.get("data_format", "channels_last")
    layer.build((None, 7, 8, channels) if fmt == "channels_last" else (None, channels, 7, 8))
    rng = np.random.default_rng(seed + 10)
    layer.direction.assign(rng.standard_normal(layer.direction.shape).astype("float32"))
    layer.strength.assign(rng.uniform(0.2, 2.0, layer.strength.shape).astype("float32"))
    if layer.bias is not None:
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    mask = (rng.uniform(size=layer.mask.shape) >= mask_fraction).astype("float32")
    layer.set_mask(mask)
    return layer


def _oracle(layer):
    geometry = dict(stride=layer.strides[0], padding=layer.padding, groups=layer.groups,
                    dilation=layer.dilation_rate[0])

    def forward(x, w):
        return oracle.synaptic_conv(x, w["direction"], w["strength"], _np(layer.mask),
                                    w.get("bias"), **geometry)

    def vjp(x, w, cotangent):
        return adjoint.synaptic_conv_vjp(x, w["direction"], w["strength"], _np(layer.mask),
                                         w.get("bias"), cotangent, **geometry)

    return adjoint.with_vjp(forward, vjp)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding="same"),
        dict(padding="valid", strides=2),
        dict(padding="same", strides=2, use_bias=False),
        dict(padding="same", groups=2),
        dict(padding="same", dilation_rate=2),
        dict(padding="valid", dilation_rate=2, groups=2),
    ],
    ids=["same", "valid-s2", "same-s2-nobias", "groups2", "same-d2", "valid-d2-groups2"],
)
def test_matches_oracle_forward_and_gradients(kwargs):
    layer = _layer(**kwargs)
    harness.assert_matches_oracle(layer, _rand(2, 7, 8, 4), _oracle(layer), rtol=1e-5,
                                  atol=1e-5, grad_rtol=2e-4, grad_atol=2e-4)


def test_channels_first_matches_channels_last():
    last = _layer(padding="same")
    first = _layer(padding="same", data_format="channels_first")
    x = _rand(2, 7, 8, 4)
    y_last = _np(last(x))
    y_first = _np(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), y_last, rtol=1e-5, atol=1e-5)


def test_kernel_formula_and_pruned_slices_exactly_zero():
    layer = _layer(mask_fraction=0.5)
    mask = _np(layer.mask)
    expected = oracle.kernel(_np(layer.direction), _np(layer.strength), mask)
    kernel = _np(layer.kernel)
    np.testing.assert_allclose(kernel, expected, rtol=1e-6, atol=1e-7)
    assert np.all(kernel[:, :, mask == 0] == 0.0)
    assert np.all(_np(layer.strength)[mask == 0] == 0.0)  # set_mask zeroes the stored strength


def test_equals_conv2d_at_init_with_the_same_initializer():
    x = _rand(2, 9, 9, 3)
    synaptic = SynapticConv2D(5, 3, padding="same",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=3))
    conv = keras.layers.Conv2D(5, 3, padding="same",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=3))
    y_syn, y_conv = _np(synaptic(x)), _np(conv(x))
    np.testing.assert_allclose(y_syn, y_conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(synaptic.strength), np.sqrt(np.sum(_np(conv.kernel) ** 2,
                                                                      axis=(0, 1))), rtol=1e-5)
    assert synaptic.connection_sparsity == 0.0


def test_from_conv2d_identical_outputs():
    conv = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu",
                               bias_initializer="random_normal")
    x = _rand(2, 9, 9, 4)
    y = _np(conv(x))
    synaptic = SynapticConv2D.from_conv2d(conv, strength_regularizer=None)
    np.testing.assert_allclose(_np(synaptic(x)), y, rtol=1e-5, atol=1e-6)
    assert synaptic.strength_regularizer is None and synaptic.name == conv.name
    with pytest.raises(TypeError, match="Conv2D"):
        SynapticConv2D.from_conv2d(keras.layers.Dense(3))


def test_penalty_is_on_the_masked_strength():
    layer = _layer(strength_regularizer=keras.regularizers.L1(0.01), mask_fraction=0.4)
    raw = _np(layer.strength)
    raw[_np(layer.mask) == 0] = 5.0  # stored numbers of pruned connections do not count
    layer.strength.assign(raw.astype("float32"))
    expected = 0.01 * np.sum(np.abs(raw * _np(layer.mask)))
    (loss,) = layer.losses
    np.testing.assert_allclose(float(_np(loss)), expected, rtol=1e-5)


def test_pruned_gradients_are_exactly_zero():
    layer = _layer(mask_fraction=0.5, strength_regularizer=keras.regularizers.L1(0.01))
    mask = _np(layer.mask)
    x = _rand(2, 7, 8, 4)
    names = [v.name for v in layer.trainable_variables]

    def loss(*values):
        y, _ = layer.stateless_call(list(values), [v.value for v in layer.non_trainable_variables], x)
        masked = keras.ops.multiply(values[names.index("strength")], mask.astype("float32"))
        reg = layer.strength_regularizer(masked)
        return keras.ops.sum(y * y) + reg

    grads = harness.backend_gradients(loss, [_np(v).astype("float32") for v in layer.trainable_variables])
    g_dir, g_str = grads[names.index("direction")], grads[names.index("strength")]
    assert np.all(g_dir[:, :, mask == 0] == 0) and np.all(g_str[mask == 0] == 0)
    assert np.any(g_dir[:, :, mask == 1] != 0) and np.any(g_str[mask == 1] != 0)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_masked_connections_stay_zero_through_training(optimizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = SynapticConv2D(8, 3, padding="same", activation="relu", name="s1")(inputs)
    h = SynapticConv2D(6, 3, padding="same", name="s2")(h)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    opt = (keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd_momentum"
           else keras.optimizers.Adam(0.01))
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _rand(32, 8, 8, 3, seed=1), np.random.default_rng(2).integers(0, 2, 32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # momentum / Adam moments now non-zero
    pruning.prune(model, 0.7)
    masks = {l.name: _np(l.mask) for l in pruning.prunable_layers(model)}
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for layer in pruning.prunable_layers(model):
        mask = masks[layer.name]
        np.testing.assert_array_equal(_np(layer.mask), mask)
        kernel = _np(layer.kernel)
        assert np.all(kernel[:, :, mask == 0] == 0.0), layer.name
        assert np.any(kernel[:, :, mask == 1] != 0.0)


PRUNED = (np.arange(12).reshape(3, 4) % 3 != 0).astype("float32")  # 4 of 12 connections


def test_layer_contract():
    """With some connections pruned: every weight still trains, and the pruned connections'
    direction and strength get exactly zero gradient."""
    def promised_zeros(variable):
        if variable.name == "strength":
            return PRUNED
        if variable.name == "direction":
            return PRUNED[None, None]
        return None

    harness.run_layer_test(
        SynapticConv2D,
        {"filters": 4, "kernel_size": 3, "padding": "same"},
        (2, 8, 8, 3),
        expected_output_shape=(2, 8, 8, 4),
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=1,
        expected_num_params=3 * 3 * 3 * 4 + 3 * 4 + 4 + 3 * 4,
        prepare=lambda layer: layer.set_mask(PRUNED),
        promised_zeros=promised_zeros,
    )


def test_config_keeps_every_argument():
    layer = SynapticConv2D(4, (3, 5), strides=2, padding="same", dilation_rate=1, groups=2,
                           activation="relu", use_bias=False,
                           strength_regularizer=keras.regularizers.L2(1e-3),
                           strength_constraint="non_neg", epsilon=1e-10)
    clone = SynapticConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.kernel_size == (3, 5) and clone.groups == 2 and clone.epsilon == 1e-10
    assert isinstance(clone.strength_regularizer, keras.regularizers.L2)
    default = SynapticConv2D(4, 3)
    assert isinstance(default.strength_regularizer, keras.regularizers.L1)
    l1 = SynapticConv2D.from_config(default.get_config()).strength_regularizer.l1
    assert float(keras.ops.convert_to_numpy(l1)) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(filters=0, kernel_size=3), ValueError, "filters"),
        (dict(filters=4, kernel_size=0), ValueError, "kernel_size"),
        (dict(filters=4, kernel_size=3, padding="causal"), ValueError, "padding"),
        (dict(filters=4, kernel_size=3, groups=3), ValueError, "groups"),
        (dict(filters=4, kernel_size=3, data_format="nhwc"), ValueError, "data_format"),
        (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), ValueError, "dilation_rate"),
        (dict(filters=4, kernel_size=3, epsilon=0.0), ValueError, "epsilon"),
        (dict(filters=4, kernel_size=3, use_bias="yes"), TypeError, "use_bias"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SynapticConv2D(**kwargs)


def test_bad_input_and_mask():
    layer = SynapticConv2D(4, 3, groups=2)
    with pytest.raises(ValueError, match="groups"):
        layer.build((None, 8, 8, 3))
    layer = _layer()
    with pytest.raises(ValueError, match="shape"):
        layer.set_mask(np.ones((3, 3)))
    with pytest.raises(ValueError, match="0/1"):
        layer.set_mask(np.full(layer.mask.shape, 0.5))
