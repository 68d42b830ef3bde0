"""e4net_mnist_rot and e4_resnet18: official parameter counts, exact invariance, training."""

import functools

import keras
import numpy as np
import pytest

from keras_convx import analysis
from keras_convx.applications import e4_resnet18
from keras_convx.applications import e4net_mnist_rot

ORDER = {"p4": 4, "p4m": 8}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Parameter counts of the official PyTorch modules, from their submodules' weight shapes.
def _e4(cin, cout, k, r, gc, n):
    cr = int(cin // r)
    return cout * cin * n + cr * cin * n + 2 * cr * n + cr * k * k * (cout // gc) + k * k * (cout // gc)


def _official_mnist(fields, k, r, gc):
    lift, bns, fc = fields * 1 * 9, 7 * 2 * fields, fields * 10 + 10
    return lift + bns + 6 * _e4(fields, fields, k, r, gc, 4) + fc


def _official_resnet18(group, e4, num_classes=10):
    n = ORDER[group]
    widths = (32, 64, 128, 256) if group == "p4" else (22, 44, 88, 176)
    total = 3 * widths[0] * 9 + 2 * widths[0]  # C_4_Conv / D_4_Conv + BN
    cin = widths[0]
    for stage, w in enumerate(widths):
        for block in range(2):
            stride = 2 if stage and not block else 1
            total += w * cin * n * 9 + 2 * w  # conv1 + bn1
            total += _e4(w, w, 3, 2, 2, n) if e4 else w * w * n * 9  # conv2
            total += 2 * w  # bn2
            if stride != 1 or cin != w:
                total += w * cin * n + 2 * w  # 1×1 shortcut + bn
            cin = w
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize("size, official", [("normal", (16, 5, 1, 8)), ("large", (24, 5, 2, 2))])
def test_mnist_rot_parameter_count_equals_official(size, official):
    assert _trainable(e4net_mnist_rot(size, official_compat=True)) == _official_mnist(*official)


# The official-width ResNet-18s (up to 11 M parameters) are slow to build and their structure
# does not depend on the backend: they are built on torch only (every backend builds the
# small-width ones in the other tests).
official_widths_on_torch = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="official-width ResNet-18: backend-independent count, checked on torch")


@functools.lru_cache(maxsize=None)
def _official_resnet18_params(group, e4):
    # Built once per (group, e4) for the two tests below: building the full networks is slow.
    return _trainable(e4_resnet18(group, 10, e4=e4, official_compat=True))


@official_widths_on_torch
@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("e4", [True, False])
def test_resnet18_parameter_count_equals_official(group, e4):
    assert _official_resnet18_params(group, e4) == _official_resnet18(group, e4)


@official_widths_on_torch
@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_e4_resnet_uses_fewer_parameters_than_its_gcnn_baseline(group):
    ratio = _official_resnet18_params(group, True) / _official_resnet18_params(group, False)
    assert 0.5 < ratio < 0.65  # the paper: ~56%


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_tied_group_norm_saves_two_parameters_per_reduced_field_and_copy(group):
    tied = _trainable(e4_resnet18(group, 10, e4=True, widths=(8, 8, 8, 8)))
    untied = _trainable(e4_resnet18(group, 10, e4=True, widths=(8, 8, 8, 8), official_compat=True))
    assert untied - tied == 8 * 2 * 4 * (ORDER[group] - 1)  # tied GroupNorm: 2·C_r per E4 layer


def _shifted_by_one_pixel(model, shape):
    """The model behind a one-pixel downward shift (zero fill): a rotation turns the shift
    into another direction, so the composition is not invariant (the negative control)."""
    inputs = keras.Input(shape)
    x = keras.layers.ZeroPadding2D(((1, 0), (0, 0)))(keras.layers.Cropping2D(((0, 1), (0, 0)))(inputs))
    return keras.Model(inputs, model(x))


def _assert_invariant_and_informative(model, x, group, control=True):
    """Invariance error ≤ 1e-5, the output depends on the input (a constant output would be
    trivially invariant) and (`control`, once per application) a one-pixel shift in front
    breaks the invariance clearly."""
    errors = analysis.equivariance_error(model, x, group, output_type="invariant", per_element=True,
                                         elements="exact")
    assert max(errors.values()) <= 1e-5, errors
    y = keras.ops.convert_to_numpy(model(x))
    assert np.linalg.norm(y[0] - y[1]) > 1e-2 * np.linalg.norm(y), "output ignores its input"
    if control:
        shifted = _shifted_by_one_pixel(model, x.shape[1:])
        assert analysis.equivariance_error(shifted, x, group, output_type="invariant") > 1e-2


@pytest.mark.parametrize("group", ["p4", "p4m", "c8"])
def test_mnist_net_is_invariant(group):
    model = e4net_mnist_rot("normal", input_shape=(16, 16, 1), group=group)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype("float32")
    assert len(model.outputs[0].shape) == 2  # logits: "invariant" is the right check
    _assert_invariant_and_informative(model, x, group, control=group == "p4")


@pytest.mark.parametrize("group, e4", [("p4", True), ("p4", False), ("p4m", True), ("p4m", False)])
def test_resnet18_is_invariant(group, e4):
    model = e4_resnet18(group, 5, e4=e4, input_shape=(16, 16, 3), widths=(4, 4, 6, 6))
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype("float32")
    _assert_invariant_and_informative(model, x, group, control=(group, e4) == ("p4m", True))


def test_mnist_net_trains_and_round_trips(tmp_path):
    model = e4net_mnist_rot("normal", input_shape=(12, 12, 1))
    x = np.random.default_rng(2).standard_normal((8, 12, 12, 1)).astype("float32")
    y = np.arange(8) % 10
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = str(tmp_path / "e4net.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        e4net_mnist_rot("huge")
    with pytest.raises(ValueError, match="group"):
        e4_resnet18("q8")
    with pytest.raises(ValueError, match="fields_per_slice"):
        e4_resnet18("p4", fields_per_slice=3)
    # checked before any layer is built (fields_per_slice=0 used to divide by zero, e4="no"
    # was taken for True, a fractional class count reached the Dense layer)
    for kwargs, name in ((dict(fields_per_slice=0), "fields_per_slice"), (dict(e4="no"), "e4"),
                         (dict(num_classes=2.5), "num_classes"), (dict(dropout=1.0), "dropout"),
                         (dict(official_compat=1), "official_compat")):
        with pytest.raises((TypeError, ValueError), match=rf"Expected {name} "):
            e4_resnet18("p4", **kwargs)
    for kwargs, name in ((dict(num_classes=0), "num_classes"), (dict(dropout=-0.1), "dropout")):
        with pytest.raises(ValueError, match=rf"Expected {name} "):
            e4net_mnist_rot("normal", **kwargs)
