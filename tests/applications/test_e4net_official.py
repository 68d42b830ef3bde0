"""Porting the official E4-Net PyTorch weights: every group layer, E4 and both applications
give the official forward's outputs (tests/oracles/official_e4.py, transcribed from the
official modules) from a hand-made state dict in the official layout."""

import keras
import numpy as np
import pytest

from keras_convx.applications import e4_resnet18
from keras_convx.applications import e4net_mnist_rot
from keras_convx.applications.e4net import from_official_weights as load_official
from keras_convx.layers import E4Conv2D
from keras_convx.layers import GroupBatchNormalization
from keras_convx.layers import GroupConv2D
from keras_convx.layers import GroupLiftConv2D
from keras_convx.layers.e4_conv import from_official_weights as e4_from_official
from keras_convx.layers.group_conv import from_official_weights as conv_from_official
from keras_convx.layers.group_maps import batch_norm_from_official
from tests import harness
from tests.oracles import official_e4 as official

ORDER = {"p4": 4, "p4m": 8}


def _nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1)).astype(np.float64)


def _nhwc(y):
    return np.moveaxis(y, 1, -1)


def _run(layer, x):
    return harness.to_numpy(layer(x.astype("float32"), training=False)).astype(np.float64)


class _State(dict):
    """A state dict filled in the official layout with seeded random values."""

    def __init__(self, seed):
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def add(self, key, *shape, low=None):
        value = (self.rng.uniform(low, 2.0, shape) if low is not None
                 else self.rng.standard_normal(shape) * 0.5)
        self[key] = value
        return value

    def bn(self, prefix, fields):
        self.add(f"{prefix}.bn.weight", fields)
        self.add(f"{prefix}.bn.bias", fields)
        self.add(f"{prefix}.bn.running_mean", fields)
        self.add(f"{prefix}.bn.running_var", fields, low=0.5)
        self[f"{prefix}.bn.num_batches_tracked"] = np.array(7)

    def e4(self, prefix, cin, cout, k, r, per_slice, n):
        cr = int(cin // r)
        self.add(f"{prefix}.v.0.weight", cout, cin, n)
        self.add(f"{prefix}.conv1.0.weight", cr, cin, n)
        self.add(f"{prefix}.conv1.1.weight", cr * n)  # untied: one γ per orientation copy
        self.add(f"{prefix}.conv1.1.bias", cr * n)
        self.add(f"{prefix}.conv2.0.net.weight", k * k * (cout // per_slice), cr, 1, 1, 1)
        self.add(f"{prefix}.conv2.0.net.bias", k * k * (cout // per_slice))


# ------------------------------------------------------------------------------ single layers


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_lifting_conv_from_official(group):
    n = ORDER[group]
    state = _State(0)
    weight = state.add("w", 5, 2, 3, 3)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2))
    layer = GroupLiftConv2D(5, 3, group=group, padding="same", use_bias=False)
    layer.build(x.shape)
    layer.set_weights(conv_from_official(weight))
    np.testing.assert_allclose(_run(layer, x), _nhwc(official.lift(_nchw(x), weight, n)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("k, stride, bias", [(3, 1, True), (3, 2, False), (1, 1, False), (1, 2, True)])
def test_group_conv_from_official(group, k, stride, bias):
    # official stride 2 = the stride-1 conv followed by 2×2 max pooling (then the bias)
    n = ORDER[group]
    state = _State(2)
    weight = state.add("w", 3, 2, n, k, k) if k > 1 else state.add("w", 3, 2, n)
    b = state.add("b", 3) if bias else None
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 2 * n))
    inputs = keras.Input(x.shape[1:])
    conv = GroupConv2D(3, k, group=group, padding="same", use_bias=bias)
    y = conv(inputs)
    if stride > 1:
        y = keras.layers.MaxPooling2D(2)(y)
    model = keras.Model(inputs, y)
    conv.set_weights(conv_from_official(weight, b))
    expected = official.group_conv(_nchw(x), weight, n, stride, b)
    np.testing.assert_allclose(_run(model, x), _nhwc(expected), rtol=1e-5, atol=1e-5)


def test_batch_norm_from_official():
    state = _State(4)
    state.bn("bn", 3)
    x = np.random.default_rng(5).standard_normal((2, 4, 4, 3 * 8))
    layer = GroupBatchNormalization("p4m", epsilon=1e-5)
    layer.build(x.shape)
    layer.set_weights(batch_norm_from_official(*(state[f"bn.bn.{k}"] for k in
                                                 ("weight", "bias", "running_mean", "running_var"))))
    expected = official.batch_norm(_nchw(x), {k[len("bn.bn."):]: v for k, v in state.items()
                                              if k.startswith("bn.bn.")}, 8)
    np.testing.assert_allclose(_run(layer, x), _nhwc(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("k, r, per_slice, stride", [(5, 1, 2, 1), (3, 2, 1, 1), (3, 2, 2, 2)])
def test_e4_from_official(group, k, r, per_slice, stride):
    n = ORDER[group]
    state = _State(6)
    state.e4("conv2", 4, 4, k, r, per_slice, n)
    x = np.random.default_rng(7).standard_normal((2, 8, 8, 4 * n))
    layer = E4Conv2D(4, k, group=group, reduction_ratio=r, slices=4 // per_slice, strides=stride,
                     official_compat=True)
    layer.build(x.shape)
    layer.set_weights(e4_from_official(state, prefix="conv2"))
    module = {key[len("conv2."):]: v for key, v in state.items()}
    expected = official.e4(_nchw(x), module, n, k, per_slice, stride)
    np.testing.assert_allclose(_run(layer, x), _nhwc(expected), rtol=1e-4, atol=1e-4)


def test_e4_tied_layer_takes_only_tied_official_norms():
    state = _State(8)
    state.e4("", 4, 4, 3, 2, 2, 4)
    state = {key.lstrip("."): v for key, v in state.items()}
    with pytest.raises(ValueError, match="official_compat=True"):
        e4_from_official(state, official_compat=False)
    state["conv1.1.weight"] = np.repeat([0.5, 2.0], 4)
    state["conv1.1.bias"] = np.repeat([0.1, -0.3], 4)
    weights = e4_from_official(state, official_compat=False)
    np.testing.assert_array_equal(weights[1], [0.5, 2.0])
    np.testing.assert_array_equal(weights[2], [0.1, -0.3])
    with pytest.raises(ValueError, match="conv2.0.net.bias"):
        e4_from_official({k: v for k, v in state.items() if k != "conv2.0.net.bias"})


def test_torch_parameters_are_accepted():
    torch = pytest.importorskip("torch")
    weight = np.random.default_rng(9).standard_normal((3, 2, 4, 3, 3)).astype("float32")
    parameter = torch.nn.Parameter(torch.from_numpy(weight.copy()))  # requires grad
    np.testing.assert_array_equal(conv_from_official(parameter)[0], conv_from_official(weight)[0])


def test_bad_official_weights_are_refused_by_name():
    with pytest.raises(ValueError, match="weight"):
        conv_from_official(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\|G\| = 4"):
        conv_from_official(np.zeros((3, 2, 5, 3, 3)))
    with pytest.raises(ValueError, match="bias"):
        conv_from_official(np.zeros((3, 2, 4)), np.zeros(4))
    with pytest.raises(TypeError, match="weight"):
        conv_from_official("kernel")
    with pytest.raises(ValueError, match="one shape"):
        batch_norm_from_official(np.ones(3), np.ones(3), np.ones(3), np.ones(4))


# ------------------------------------------------------------------------------ applications


def _mnist_state(fields, k, r, per_slice, n, seed=10):
    state = _State(seed)
    state.add("conv1.weight", fields, 1, 3, 3)
    for i in range(1, 8):
        state.bn(f"bn{i}", fields)
    for i in range(2, 8):
        state.e4(f"conv{i}", fields, fields, k, r, per_slice, n)
    state.add("fully_net.0.weight", 10, fields)
    state.add("fully_net.0.bias", 10)
    return state


def _resnet_state(widths, e4, n, num_classes=5, seed=11):
    state = _State(seed)
    state.add("conv1.0.weight", widths[0], 3, 3, 3)
    state.bn("conv1.1", widths[0])
    cin = widths[0]
    for stage, fields in enumerate(widths, start=2):
        for block in range(2):
            prefix = f"conv{stage}_x.{block}"
            r = f"{prefix}.residual_function"
            state.add(f"{r}.0.weight", fields, cin, n, 3, 3)
            state.bn(f"{r}.2", fields)
            if e4:
                state.e4(f"{r}.4", fields, fields, 3, 2, 2, n)
            else:
                state.add(f"{r}.4.weight", fields, fields, n, 3, 3)
            state.bn(f"{r}.5", fields)
            if (stage > 2 and block == 0) or cin != fields:
                state.add(f"{prefix}.shortcut.0.weight", fields, cin, n)
                state.bn(f"{prefix}.shortcut.1", fields)
            cin = fields
    state.add("fc.weight", num_classes, widths[-1])
    state.add("fc.bias", num_classes)
    return state


@pytest.mark.parametrize("size, group", [("normal", "p4"), ("large", "p4m")])
def test_mnist_net_from_official_state_dict(size, group):
    n = ORDER[group]
    fields, k, r, per_slice = {"normal": (16, 5, 1, 8), "large": (24, 5, 2, 2)}[size]
    state = _mnist_state(fields, k, r, per_slice, n)
    model = e4net_mnist_rot(size, input_shape=(12, 12, 1), group=group, official_compat=True)
    given = {f"module.{key}": v for key, v in state.items()}  # nn.DataParallel's keys
    if size == "normal":  # as torch gives them: nn.Parameters (requires grad) and buffers
        torch = pytest.importorskip("torch")
        given = {key: (torch.nn.Parameter(torch.from_numpy(np.asarray(v, "float32")))
                       if np.ndim(v) else torch.tensor(v)) for key, v in given.items()}
    load_official(model, given)
    x = np.random.default_rng(12).standard_normal((2, 12, 12, 1))
    expected = official.mnist_net(_nchw(x), state, n, k, per_slice)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group, e4", [("p4", True), ("p4", False), ("p4m", True), ("p4m", False)])
def test_resnet18_from_official_state_dict(group, e4):
    n = ORDER[group]
    widths = (2, 4, 4, 6)
    state = _resnet_state(widths, e4, n)
    model = e4_resnet18(group, 5, e4=e4, input_shape=(16, 16, 3), widths=widths,
                        official_compat=True)
    load_official(model, state)
    x = np.random.default_rng(13).standard_normal((2, 16, 16, 3))
    expected = official.resnet18(_nchw(x), state, n, e4)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)


def test_official_state_dict_mismatches_are_refused_before_loading():
    state = _mnist_state(16, 5, 1, 8, 4)
    model = e4net_mnist_rot("normal", input_shape=(12, 12, 1), official_compat=True)
    before = [harness.to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match="no layer"):
        load_official(model, {**state, "extra.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="bn3.bn.running_var"):
        load_official(model, {k: v for k, v in state.items() if k != "bn3.bn.running_var"})
    with pytest.raises(ValueError, match="shape"):
        load_official(model, _mnist_state(24, 5, 1, 8, 4))
    with pytest.raises(ValueError, match="official_compat=True"):
        load_official(e4net_mnist_rot("normal", input_shape=(12, 12, 1)), state)
    with pytest.raises(ValueError, match="e4net_mnist_rot or"):
        load_official(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), state)
    for variable, value in zip(model.weights, before):  # nothing half-loaded
        np.testing.assert_array_equal(harness.to_numpy(variable), value)
