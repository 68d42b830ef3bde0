"""Argument validation: `keras_convx.arguments` and every public class that uses it.

- The helpers: NumPy scalars accepted wherever Python numbers are, NaN/inf/bool/str refused,
  every message naming the argument and the accepted values.
- The cases reported in the Robustness issue, one by one.
- A property-based fuzz (hypothesis): for each public layer, configurations drawn from valid
  and hostile values either build and run on a small input, or raise ValueError/TypeError
  naming one of the drawn arguments — never anything else.
"""

import os
import warnings

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_convx import applications
from keras_convx import arguments
from keras_convx import constraints
from keras_convx import export
from keras_convx import layers
from keras_convx import ops
from keras_convx import pruning
from keras_convx import regularizers
from tests import harness

# ------------------------------------------------------------------------------ the helpers


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(1), 0.5, 1])
def test_number_accepts_python_and_numpy_scalars(value):
    got = arguments.number("x", value, 0, 1)
    assert isinstance(got, float) and got == pytest.approx(float(value))


@pytest.mark.parametrize("value, error", [
    (float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError),
    (np.float32("nan"), ValueError), ("abc", TypeError), ("0.5", TypeError), (True, TypeError),
    (None, TypeError), ([0.5], TypeError), (np.array([0.5]), TypeError), (2.0, ValueError),
])
def test_number_refuses_naming_the_argument_and_the_interval(value, error):
    with pytest.raises(error, match=r"Expected momentum to be a finite number in \[0, 1\)\. "
                                    r"Received: momentum="):
        arguments.number("momentum", value, 0, 1, exclusive_maximum=True)


def test_integer_pair_boolean_choice():
    assert arguments.integer("rings", np.int32(3)) == 3
    assert arguments.pair("strides", np.int64(2)) == (2, 2)
    assert arguments.boolean("flag", np.bool_(True)) is True
    for call, error, pattern in [
        (lambda: arguments.integer("rings", 2.0), TypeError, "rings to be an int >= 1"),
        (lambda: arguments.integer("rings", True), TypeError, "rings"),
        (lambda: arguments.integer("rings", 0), ValueError, r"rings to be an int >= 1\. Received: rings=0"),
        (lambda: arguments.pair("strides", (1, 0)), ValueError, "strides"),
        (lambda: arguments.boolean("flag", 1), TypeError, "flag to be a bool"),
        (lambda: arguments.choice("padding", "full", ("same", "valid")), ValueError,
         r"padding to be one of \['same', 'valid'\]"),
    ]:
        with pytest.raises(error, match=pattern):
            call()


# ------------------------------------------------------------------- the reported cases


def test_numpy_scalars_accepted_by_the_public_classes():
    assert regularizers.Orthonormal(np.float32(10)).factor == 10.0
    bn = layers.GroupBatchNormalization("p4", momentum=np.float32(0.5), epsilon=np.float64(1e-3))
    assert (bn.momentum, bn.epsilon) == (0.5, 1e-3)
    assert layers.E4Conv2D(2, 3, epsilon=np.float32(0.25)).epsilon == 0.25
    assert layers.E4Conv2D(2, 3, reduction_ratio=np.int64(2)).get_config()["reduction_ratio"] == 2


@pytest.mark.parametrize("make, name", [
    (lambda: layers.E4Conv2D(2, 3, epsilon=float("nan")), "epsilon"),
    (lambda: layers.E4Conv2D(2, 3, reduction_ratio=float("nan")), "reduction_ratio"),
    (lambda: regularizers.Orthonormal(factor=float("inf")), "factor"),
    (lambda: regularizers.Orthonormal(normalizer=0), "normalizer"),
    (lambda: layers.GroupBatchNormalization("p4", momentum=1.0), "momentum"),
    (lambda: layers.SharedBasisConv2D(4, layers.FilterBasis(4, 3), basis_bn_momentum="abc"),
     "basis_bn_momentum"),
    (lambda: layers.SharedBasisConv2D(4, layers.FilterBasis(4, 3), basis_bn_momentum=5.0),
     "basis_bn_momentum"),
    (lambda: layers.SharedBasisConv2D(4, layers.FilterBasis(4, 3), basis_bn_epsilon=-1),
     "basis_bn_epsilon"),
    (lambda: pruning.PolynomialDecay(0.1, 0.5, 0, 10, power="abc"), "power"),
    (lambda: pruning.PolynomialDecay(0.5, 0.1, 0, 10), "final_sparsity"),
    (lambda: layers.DiffusionConv2D(step_size=float("inf")), "step_size"),
    (lambda: layers.SynapticConv2D(4, 3, epsilon=float("nan")), "epsilon"),
    (lambda: layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=float("nan")),
     "growth_rate"),
])
def test_hostile_arguments_are_refused_by_name(make, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        make()


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: applications.pde_net(dropout="0.1"), TypeError, "dropout to be a finite number"),
    (lambda: applications.pde_net(dropout=1.0), ValueError, r"dropout to be .* in \[0, 1\)"),
    (lambda: applications.resnet_cifar(shortcut="a"), ValueError,
     r"shortcut to be one of \['A', 'B'\]"),
    (lambda: applications.resnet_cifar(orthonormal_factor=True), TypeError, "orthonormal_factor"),
    (lambda: applications.resnet_cifar(orthonormal_factor=-1.0), ValueError,
     "orthonormal_factor to be a finite number >= 0"),
    (lambda: applications.lpsc_resnet20(depth=20.0), TypeError, "depth to be an int"),
    (lambda: applications.lpsc_resnet20(num_classes="10"), TypeError, "num_classes to be an int"),
    (lambda: applications.lpsc_resnet20(variant="ccc"), ValueError,
     r"variant to be one of \['stem', 'cc'\]"),
    (lambda: ops.reference_mode("yes").__enter__(), TypeError, "flag to be a bool"),
])
def test_application_and_mode_arguments_use_the_one_validation_module(make, error, pattern):
    """The builders and mode switches refuse bad values with `arguments`' messages, of the
    right kind (a string for a number is a TypeError), before building anything."""
    with pytest.raises(error, match=pattern):
        make()


@pytest.mark.parametrize("penalty", [regularizers.Orthonormal(1.0), constraints.Orthonormal()])
@pytest.mark.parametrize("shape", [(), (4,)])
def test_orthonormal_refuses_weights_of_rank_below_2(penalty, shape):
    with pytest.raises(ValueError, match="rank >= 2"):
        penalty(keras.ops.ones(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_orthonormal_constraint_leaves_a_non_finite_kernel_unchanged(bad):
    w = np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype("float32")
    w[1, 2, 0, 3] = bad
    got = harness.to_numpy(constraints.Orthonormal()(keras.ops.convert_to_tensor(w)))
    np.testing.assert_array_equal(got, w)
    # and a finite kernel is still projected (the guard does not switch the projection off)
    finite = np.nan_to_num(w, posinf=0.0)
    projected = harness.to_numpy(constraints.Orthonormal()(keras.ops.convert_to_tensor(finite)))
    rows = projected.reshape(-1, 4).T
    np.testing.assert_allclose(rows @ rows.T, np.eye(4), atol=1e-5)


def _tiny_model():
    inputs = keras.Input((6, 6, 2))
    return keras.Model(inputs, keras.layers.Conv2D(3, 3)(inputs))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(atol=-1.0), ValueError, "atol"),
    (dict(rtol="x"), TypeError, "rtol"),
    (dict(atol=float("nan")), ValueError, "atol"),
    (dict(sample_inputs=np.zeros((2, 5, 5, 2), "float32")), ValueError, "sample_inputs"),
    (dict(sample_inputs=np.zeros((2, 6, 6), "float32")), ValueError, "sample_inputs"),
    (dict(sample_inputs=np.full((2, 6, 6, 2), np.nan, "float32")), ValueError, "sample_inputs"),
    (dict(fold_first=1), TypeError, "fold_first"),
])
@pytest.mark.parametrize("to_file, suffix", [(export.to_onnx, ".onnx"),
                                             (export.to_litert, ".tflite")])
def test_export_checks_its_arguments_before_exporting(tmp_path, to_file, suffix, kwargs, error,
                                                       name):
    path = tmp_path / f"model{suffix}"
    with pytest.raises(error, match=name):
        to_file(_tiny_model(), path, **kwargs)
    assert not path.exists()


def test_export_refuses_a_missing_output_folder(tmp_path):
    path = tmp_path / "missing" / "model.onnx"
    with pytest.raises(ValueError, match="folder of path does not exist"):
        export.to_onnx(_tiny_model(), path)
    assert not os.path.exists(path.parent)


def test_log_polar_empty_regions_are_reported_and_warned_once():
    assert ops.log_polar_empty_regions(3, rings=2, sectors=6, growth_rate=2.0) == [
        (1, a) for a in range(6)]
    assert ops.log_polar_empty_regions(9, rings=2, sectors=6, growth_rate=3.0) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            layers.LogPolarConv2D(4, 3, rings=2, sectors=6, growth_rate=2.0)
        layers.LogPolarConv2D(4, 9, rings=2, sectors=6, growth_rate=3.0)
    messages = [str(w.message) for w in caught if "regions hold no pixel" in str(w.message)]
    assert len(messages) == 1 and "6 of 12 regions" in messages[0]


# --------------------------------------------------------------------- the property fuzz

# Hostile and valid values for any argument: the fuzz draws each argument from these.
NUMBERS = st.one_of(
    st.integers(-3, 9),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([np.float32(0.5), np.int64(2), np.float64(1e-3)]),
)
ANY = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=4),
                st.sampled_from(["same", "valid", "p4", "p4m", "mean", "max", "dense", "pool",
                                 "channels_first", (3, 3), (1, 2), [2, 2], "auto"]))

# The arguments each layer is fuzzed on (its others keep their defaults).
FUZZED = {
    "LogPolarConv2D": (lambda **kw: layers.LogPolarConv2D(**kw), 3,
                       dict(filters=2, kernel_size=5, rings=2, sectors=4, growth_rate=2.0),
                       ["filters", "kernel_size", "rings", "sectors", "growth_rate", "strides",
                        "padding", "pooling", "implementation", "groups", "center",
                        "initial_angle"]),
    "GroupLiftConv2D": (lambda **kw: layers.GroupLiftConv2D(**kw), 3, dict(filters=2, kernel_size=3),
                        ["filters", "kernel_size", "group", "strides", "padding", "use_bias"]),
    "GroupConv2D": (lambda **kw: layers.GroupConv2D(**kw), 8, dict(filters=2, kernel_size=3),
                    ["filters", "kernel_size", "group", "strides", "padding"]),
    "GroupBatchNormalization": (lambda **kw: layers.GroupBatchNormalization(**kw), 8, {},
                                ["group", "momentum", "epsilon", "center", "scale"]),
    "GroupPooling": (lambda **kw: layers.GroupPooling(**kw), 8, {}, ["group", "pooling"]),
    "E4Conv2D": (lambda **kw: layers.E4Conv2D(**kw), 8, dict(filters=2, kernel_size=3),
                 ["filters", "kernel_size", "group", "reduction_ratio", "slices", "strides",
                  "epsilon", "implementation", "official_compat"]),
    "FilterBasis": (lambda **kw: layers.FilterBasis(**kw), 3, dict(size=2, kernel_size=3),
                    ["size", "kernel_size", "parts"]),
    "SharedBasisConv2D": (
        lambda **kw: layers.SharedBasisConv2D(basis=layers.FilterBasis(2, 3), **kw), 3,
        dict(filters=2),
        ["filters", "unique_bases", "strides", "padding", "basis_batch_norm",
         "basis_bn_momentum", "basis_bn_epsilon", "implementation", "use_bias"]),
    "DiffusionConv2D": (lambda **kw: layers.DiffusionConv2D(**kw), 3, {},
                        ["filters", "kernel_size", "step_size", "stable"]),
    "HyperbolicConv2D": (lambda **kw: layers.HyperbolicConv2D(**kw), 3, {},
                         ["filters", "kernel_size", "step_size", "stable", "return_state",
                          "diffusion_blend"]),
    "SynapticConv2D": (lambda **kw: layers.SynapticConv2D(**kw), 3, dict(filters=2, kernel_size=3),
                       ["filters", "kernel_size", "strides", "padding", "groups", "epsilon",
                        "use_bias"]),
}


def test_every_public_layer_is_fuzzed():
    public = {n for n in layers.__all__ if isinstance(getattr(layers, n), type)
              and issubclass(getattr(layers, n), keras.layers.Layer)}
    graph = {"GraphDiffusion", "GraphHyperbolic"}
    assert public - graph == set(FUZZED)


@pytest.mark.parametrize("name", sorted(FUZZED))
def test_fuzzed_configurations_build_or_name_an_argument(name):
    make, channels, base, fuzzed = FUZZED[name]

    @settings(max_examples=15, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.fixed_dictionaries({}, optional={a: ANY for a in fuzzed}))
    def check(drawn):
        kwargs = dict(base, **drawn)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layer = make(**kwargs)
        except (ValueError, TypeError) as error:
            message = str(error)
            assert any(arg in message for arg in drawn), (
                f"{name}({kwargs}) raised without naming a drawn argument: {message}")
            return
        x = np.random.default_rng(0).standard_normal((1, 9, 9, channels)).astype("float32")
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            x = np.moveaxis(x, -1, 1)
        try:
            y = layer(x)
        except (ValueError, TypeError) as error:
            # A combination valid on its own but not for this input (e.g. groups not dividing
            # the channels, 'valid' padding larger than the image): must still say which.
            message = str(error)
            assert any(arg in message for arg in (*drawn, "channels", "input", "Input")), (
                f"{name}({kwargs}) failed on a (1, 9, 9, {channels}) input without naming "
                f"the cause: {message}")
            return
        for out in y if isinstance(y, (list, tuple)) else [y]:
            assert np.all(np.isfinite(harness.to_numpy(keras.ops.cast(out, "float32"))))

    check()
