"""FilterBasis, SharedBasisConv2D, regularizers/constraints.Orthonormal."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_convx import constraints
from keras_convx import layers
from keras_convx import regularizers
from keras_convx.layers import FilterBasis
from keras_convx.layers import SharedBasisConv2D
from keras_convx.ops import shared_basis as sb
from tests import harness
from tests.oracles import shared_basis as oracle


def _rand(*shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype("float32")


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def _layer(filters=5, size=3, unique=2, kernel_size=3, channels=4, seed=0, **kwargs):
    """A built layer with random weights and random (non-trivial) moving statistics."""
    basis = FilterBasis(size, kernel_size)
    layer = SharedBasisConv2D(filters, basis, unique_bases=unique, **kwargs)
    fmt = kwargs.get("data_format", "channels_last")
    layer.build((None, 6, 7, channels) if fmt == "channels_last" else (None, channels, 6, 7))
    rng = np.random.default_rng(seed + 100)
    for v in layer.weights:
        value = rng.standard_normal(v.shape) * 0.5
        if v.name == "moving_variance":
            value = rng.uniform(0.5, 2.0, v.shape)
        v.assign(value.astype("float32"))
    return layer


def _oracle(layer, training=False):
    def forward(x, w):
        bn = None
        if layer.basis_bn is not None:
            bn = {
                "gamma": w["gamma"],
                "beta": w["beta"],
                "mean": _np(layer.basis_bn.moving_mean),
                "var": _np(layer.basis_bn.moving_variance),
            }
        return oracle.shared_basis_conv(
            x,
            w.get("unique_kernel"),
            w["kernel"][..., layer.basis_part * layer.basis.size :][..., : layer.basis.size],
            w["coefficients"],
            stride=layer.strides[0],
            padding=layer.padding,
            bn=bn,
            training=training,
            bias=w.get("bias"),
        )

    return forward


def test_oracle_conv_is_the_definition():
    x, k = _rand(1, 5, 6, 2).astype(np.float64), _rand(3, 3, 2, 1, seed=1).astype(np.float64)
    y = oracle.conv2d(x, k, 2, "same")
    # "same" at stride 2 on 5 rows: out 3, total pad (3-1)*2+3-5 = 2 → 1 before, 1 after.
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # cols: out 3, pad 2+3-6=1 → 0 before?
    xp = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)))
    expected = sum(
        xp[0, 2 * 1 + di, 2 * 2 + dj] @ k[di, dj] for di in range(3) for dj in range(3)
    )
    np.testing.assert_allclose(y[0, 1, 2], expected)


@pytest.mark.parametrize("implementation", ["basis_first", "kernel_first"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"strides": 2},
        {"padding": "valid", "use_bias": True},
        {"basis_batch_norm": False, "strides": 2, "padding": "valid"},
    ],
)
def test_matches_oracle_inference(implementation, kwargs):
    layer = _layer(implementation=implementation, **kwargs)
    x = _rand(2, 6, 7, 4, seed=3)
    harness.assert_matches_oracle(layer, x, _oracle(layer), rtol=1e-4, atol=1e-4)


def test_matches_oracle_unique_zero_and_basis_part():
    basis = FilterBasis(2, 3, parts=2)
    layer = SharedBasisConv2D(4, basis, basis_part=1)
    layer.build((None, 6, 7, 3))
    x = _rand(2, 6, 7, 3, seed=4)
    harness.assert_matches_oracle(layer, x, _oracle(layer), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides", [1, 2])
def test_matches_oracle_training_batch_statistics(strides):
    layer = _layer(strides=strides)
    x = _rand(3, 6, 7, 4, seed=5)
    assert layer.resolved_implementation(training=True) == "basis_first"
    harness.assert_matches_oracle(
        layer, x, _oracle(layer, training=True), rtol=1e-4, atol=1e-4,
        grad_rtol=2e-3, grad_atol=2e-3, call_kwargs={"training": True},
    )


def test_channels_first_matches_oracle():
    layer = _layer(data_format="channels_first", strides=2, implementation="kernel_first")
    x = _rand(2, 6, 7, 4, seed=6)
    forward = _oracle(layer)

    def cf_oracle(x_cf, w):
        return np.moveaxis(forward(np.moveaxis(x_cf, 1, -1), w), -1, 1)

    harness.assert_matches_oracle(layer, np.ascontiguousarray(np.moveaxis(x, -1, 1)), cf_oracle,
                                  rtol=1e-4, atol=1e-4)


def test_orders_agree_forward_and_gradients():
    a = _layer(implementation="basis_first", strides=2)
    b = SharedBasisConv2D(5, a.basis, unique_bases=2, strides=2, implementation="kernel_first")
    b.build((None, 6, 7, 4))
    b.set_weights(a.get_weights())
    x = _rand(2, 6, 7, 4, seed=7)
    np.testing.assert_allclose(_np(a(x)), _np(b(x)), rtol=1e-4, atol=1e-4)
    cot = _rand(*a(x).shape, seed=8)
    dxa, dwa = harness.layer_gradients(a, x, cot)
    dxb, dwb = harness.layer_gradients(b, x, cot)
    np.testing.assert_allclose(dxa, dxb, rtol=1e-4, atol=1e-4)
    for name in dwa:
        np.testing.assert_allclose(dwa[name], dwb[name], rtol=1e-3, atol=1e-4)


def test_cost_model_and_resolution():
    costs = sb.order_costs((3, 3), 64, 17, 64)
    assert costs == {"basis_first": 9 * 64 * 17 + 17 * 64, "kernel_first": 9 * 64 * 64}
    assert sb.choose_order((3, 3), 64, 17, 64) == "basis_first"
    assert sb.choose_order((3, 3), 16, 64, 8) == "kernel_first"
    layer = _layer(filters=32, size=3, unique=1)
    assert layer.resolved_implementation(training=False) == "basis_first"
    assert layer.resolved_implementation(training=True) == "basis_first"
    wide = _layer(filters=2, size=8, unique=1, basis_batch_norm=False)
    assert wide.resolved_implementation(training=True) == "kernel_first"


def test_equivalent_conv_is_the_inference_layer():
    layer = _layer(use_bias=True, strides=2)
    kernel, bias = layer.equivalent_conv()
    x = _rand(2, 6, 7, 4, seed=9)
    expected = oracle.conv2d(x.astype(np.float64), _np(kernel), 2, "same") + _np(bias)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fit", [True, False])
def test_layer_contract(fit):
    # Every layer the harness makes shares this basis, so a fit step would move the basis
    # under the data_format check's reference output: fit and data formats run separately.
    basis = FilterBasis(3, 3)
    # basis 3·3·4·3 + unique 3·3·4·2 + coefficients 5·6 + BN 4·5 (2 trainable + 2 moving)
    harness.run_layer_test(
        SharedBasisConv2D,
        # synchronized: TensorFlow-only in Keras' BN, but ours builds and round-trips anywhere
        {"filters": 6, "basis": basis, "unique_bases": 2, "strides": 2,
         "basis_bn_synchronized": True},
        (2, 8, 8, 4),
        expected_output_shape=(2, 4, 4, 6),
        expected_num_trainable_weights=5,
        expected_num_non_trainable_weights=2,
        expected_num_params=108 + 72 + 30 + 20,
        run_fit=fit,
        run_data_formats=not fit,
        run_mixed_precision=not fit,
    )


def test_filter_basis_direct_call_and_contract():
    harness.run_layer_test(
        FilterBasis, {"size": 3, "kernel_size": 3}, (2, 6, 6, 2),
        expected_output_shape=(2, 6, 6, 3), expected_num_params=54,
    )


# ------------------------------------------------------------------------------ sharing


def _two_user_model(basis, channels=4, name="m"):
    x = keras.Input((6, 6, channels))
    y = SharedBasisConv2D(channels, basis, unique_bases=1, name=f"{name}_c1")(x)
    y = keras.layers.ReLU()(y)
    y = SharedBasisConv2D(channels, basis, unique_bases=1, name=f"{name}_c2")(y)
    return keras.Model(x, y)


def test_one_variable_counted_once():
    basis = FilterBasis(3, 3)
    model = _two_user_model(basis)
    kernels = [w for w in model.weights if w.name == "kernel"]
    assert len(kernels) == 1 and kernels[0] is basis.kernel
    per_user = 3 * 3 * 4 * 1 + 4 * 4 + 4 * 4  # unique, coefficients, BN (4 rows)
    assert model.count_params() == 3 * 3 * 4 * 3 + 2 * per_user


def test_shared_gradient_is_the_sum_of_the_users_contributions():
    shared = _two_user_model(FilterBasis(3, 3), name="s")
    # The same network with two separate copies of the basis.
    b1, b2 = FilterBasis(3, 3), FilterBasis(3, 3)
    x = keras.Input((6, 6, 4))
    y = SharedBasisConv2D(4, b1, unique_bases=1, name="u_c1")(x)
    y = keras.layers.ReLU()(y)
    y = SharedBasisConv2D(4, b2, unique_bases=1, name="u_c2")(y)
    split = keras.Model(x, y)
    basis_value = harness.to_numpy(shared.get_layer("s_c1").basis.kernel)
    b1.kernel.assign(basis_value)
    b2.kernel.assign(basis_value)
    for name in ("c1", "c2"):
        src, dst = shared.get_layer(f"s_{name}"), split.get_layer(f"u_{name}")
        dst.coefficients.assign(src.coefficients)
        dst.unique_kernel.assign(src.unique_kernel)
    xs = _rand(2, 6, 6, 4, seed=11)
    cot = keras.ops.convert_to_tensor(_rand(2, 6, 6, 4, seed=12))

    def grads(model, variables):
        others = [v for v in model.trainable_variables if all(v is not w for w in variables)]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(*values):
            trainable = []
            it = iter(values)
            lookup = {id(v): None for v in variables}
            for v in model.trainable_variables:
                trainable.append(next(it) if id(v) in lookup else v.value)
            y, _ = model.stateless_call(trainable, non_trainable, xs, training=True)
            return keras.ops.sum(y * cot)

        ordered = [v for v in model.trainable_variables if any(v is w for w in variables)]
        assert len(ordered) == len(variables) and others is not None
        return harness.backend_gradients(loss, [harness.to_numpy(v) for v in ordered])

    (g_shared,) = grads(shared, [shared.get_layer("s_c1").basis.kernel])
    g1, g2 = grads(split, [b1.kernel, b2.kernel])
    assert np.abs(g1).max() > 0 and np.abs(g2).max() > 0
    np.testing.assert_allclose(g_shared, g1 + g2, rtol=1e-4, atol=1e-5)


def test_sharing_survives_keras_save_load():
    model = _two_user_model(FilterBasis(3, 3))
    xs = _rand(2, 6, 6, 4, seed=13)
    loaded = harness.check_save_load(model, xs)
    c1, c2 = loaded.get_layer("m_c1"), loaded.get_layer("m_c2")
    assert c1.basis is c2.basis
    assert c1.basis is not model.get_layer("m_c1").basis
    assert loaded.count_params() == model.count_params()
    # Still one variable after reload: an update through one user is seen by the other.
    c1.basis.kernel.assign(c1.basis.kernel * 0.0)
    assert np.all(harness.to_numpy(c2.basis.kernel) == 0.0)
    assert not np.allclose(loaded.predict(xs, verbose=0), model.predict(xs, verbose=0))


def test_two_loads_do_not_share_with_each_other():
    model = _two_user_model(FilterBasis(3, 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        a, b = keras.saving.load_model(path), keras.saving.load_model(path)
    assert a.get_layer("m_c1").basis is a.get_layer("m_c2").basis
    assert a.get_layer("m_c1").basis is not b.get_layer("m_c1").basis


def test_sharing_survives_clone_model():
    model = _two_user_model(FilterBasis(3, 3))
    first, second = keras.models.clone_model(model), keras.models.clone_model(model)
    for clone in (first, second):
        c1, c2 = clone.get_layer("m_c1"), clone.get_layer("m_c2")
        assert c1.basis is c2.basis
        assert c1.basis is not model.get_layer("m_c1").basis
        assert clone.count_params() == model.count_params()
    assert first.get_layer("m_c1").basis is not second.get_layer("m_c1").basis
    first.set_weights(model.get_weights())
    xs = _rand(2, 6, 6, 4, seed=14)
    np.testing.assert_allclose(first.predict(xs, verbose=0), model.predict(xs, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_clone_model_of_a_sequential_model():
    basis = FilterBasis(2, 3)
    model = keras.Sequential([
        keras.Input((6, 6, 3)),
        SharedBasisConv2D(3, basis, name="a"),
        SharedBasisConv2D(3, basis, name="b"),
    ])
    clone = keras.models.clone_model(model)
    assert clone.get_layer("a").basis is clone.get_layer("b").basis is not basis


# ------------------------------------------------------------------------------ orthonormality


def test_regularizer_is_the_formula_for_any_rank():
    for shape in [(3, 3, 4, 5), (7, 3), (2, 2, 2, 3, 4)]:
        w = _rand(*shape, seed=len(shape))
        value = float(harness.to_numpy(regularizers.Orthonormal(10.0)(w)))
        expected = 10.0 * oracle.orthonormality(w.astype(np.float64)) / shape[-1] ** 2
        np.testing.assert_allclose(value, expected, rtol=1e-5)
    w = _rand(3, 3, 2, 4, seed=1)
    value = float(harness.to_numpy(regularizers.Orthonormal(2.0, normalizer=50)(w)))
    np.testing.assert_allclose(value, 2.0 * oracle.orthonormality(w.astype(np.float64)) / 50,
                               rtol=1e-5)


def test_regularizer_vanishes_after_orthogonal_init_and_not_otherwise():
    basis = FilterBasis(16, 3, kernel_regularizer=regularizers.Orthonormal(10.0))
    basis.build_for_channels(4)  # 16 ≤ 3·3·4 = 36
    assert float(harness.to_numpy(basis.losses[0])) < 1e-9
    over = FilterBasis(40, 3, kernel_regularizer=regularizers.Orthonormal(10.0))
    over.build_for_channels(4)  # 40 > 36: rows cannot all be orthonormal
    assert float(harness.to_numpy(over.losses[0])) > 1e-2


def test_old_regularizers_name_of_global_orthonormal_still_works_and_warns():
    bases = [FilterBasis(2, 3), FilterBasis(4, 3)]
    with pytest.warns(DeprecationWarning, match="keras_convx.layers.apply_global_orthonormal"):
        reg = regularizers.apply_global_orthonormal(bases, 2.0)
    assert reg.normalizer == 2**2 + 4**2 and bases[1].kernel_regularizer is reg


def test_global_normalisation_over_several_bases():
    bases = [FilterBasis(2, 3), FilterBasis(4, 3, parts=2)]
    reg = layers.apply_global_orthonormal(bases, 10.0)
    assert reg.normalizer == 2**2 + 8**2
    x = keras.Input((6, 6, 3))
    y = SharedBasisConv2D(3, bases[0])(x)
    y = SharedBasisConv2D(3, bases[1], basis_part=1)(y)
    model = keras.Model(x, y)
    for b in bases:
        b.kernel.assign(_rand(*b.kernel.shape, seed=b.total_size))
    total = sum(float(harness.to_numpy(loss)) for loss in model.losses)
    expected = 10.0 * sum(oracle.orthonormality(_np(b.kernel)) for b in bases) / 68
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_double_shared_parts_are_jointly_orthonormal_at_init():
    basis = FilterBasis(4, 3, parts=2)
    basis.build_for_channels(2)  # 8 ≤ 18
    stacked = _np(basis.kernel)
    assert oracle.orthonormality(stacked) < 1e-9
    p0, p1 = _np(basis.part(0)), _np(basis.part(1))
    rows0, rows1 = p0.reshape(-1, 4).T, p1.reshape(-1, 4).T
    np.testing.assert_allclose(rows0 @ rows1.T, 0.0, atol=1e-6)


def test_constraint_projects_onto_orthonormal_rows():
    for shape in [(3, 3, 4, 6), (10, 4)]:
        w = _rand(*shape, seed=2)
        projected = _np(constraints.Orthonormal()(keras.ops.convert_to_tensor(w)))
        rows = projected.reshape(-1, shape[-1]).T
        np.testing.assert_allclose(rows @ rows.T, np.eye(shape[-1]), atol=1e-5)
        # The NEAREST such matrix (Frobenius) is the polar factor U·Vᵀ of M = U S Vᵀ, computed
        # here in float64 NumPy from the definition (M: filters as rows).
        m = w.astype(np.float64).reshape(-1, shape[-1]).T
        u, _, vt = np.linalg.svd(m, full_matrices=False)
        nearest = (u @ vt).T.reshape(shape)
        np.testing.assert_allclose(projected, nearest, atol=2e-5)


@harness.FLOAT64_PRECISION
def test_constraint_keeps_a_float64_kernel_in_float64():
    """A float64 kernel is projected in float64: its rows orthonormal to 1e-12 and the polar
    factor to 1e-12 (it was projected in float32: 1e-7)."""
    w = _rand(3, 3, 4, 6, seed=2).astype(np.float64)
    projected = _np(constraints.Orthonormal()(keras.ops.convert_to_tensor(w)))
    assert projected.dtype == np.float64
    m = w.reshape(-1, 6).T
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    np.testing.assert_allclose(projected, (u @ vt).T.reshape(w.shape), atol=1e-12)


def test_constraint_keeps_the_basis_orthonormal_through_training():
    basis = FilterBasis(4, 3, kernel_constraint=constraints.Orthonormal())
    model = _two_user_model(basis)
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss="mse")
    xs = _rand(8, 6, 6, 4, seed=15)
    model.fit(xs, _rand(8, 6, 6, 4, seed=16), epochs=3, batch_size=4, verbose=0)
    assert oracle.orthonormality(_np(basis.kernel)) < 1e-9


# ------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: FilterBasis(0, 3), ValueError, "size"),
        (lambda: FilterBasis(2.5, 3), TypeError, "size"),
        (lambda: FilterBasis(2, 3, parts=0), ValueError, "parts"),
        (lambda: SharedBasisConv2D(4, "basis"), TypeError, "basis"),
        (lambda: SharedBasisConv2D(0, FilterBasis(2, 3)), ValueError, "filters"),
        (lambda: SharedBasisConv2D(4, FilterBasis(2, 3), unique_bases=-1), ValueError,
         "unique_bases"),
        (lambda: SharedBasisConv2D(4, FilterBasis(2, 3), basis_part=1), ValueError, "basis_part"),
        (lambda: SharedBasisConv2D(4, FilterBasis(2, 3), padding="full"), ValueError, "padding"),
        (lambda: SharedBasisConv2D(4, FilterBasis(2, 3), implementation="fft"), ValueError,
         "implementation"),
        (lambda: SharedBasisConv2D(4, FilterBasis(2, 3), basis_bn_synchronized="yes"), TypeError,
         "basis_bn_synchronized"),
        (lambda: regularizers.Orthonormal(-1.0), ValueError, "factor"),
        (lambda: regularizers.Orthonormal(1.0, normalizer=0), ValueError, "normalizer"),
        (lambda: layers.apply_global_orthonormal([], 1.0), TypeError, "bases"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_basis_channel_mismatch_is_a_clear_error():
    basis = FilterBasis(2, 3)
    SharedBasisConv2D(4, basis).build((None, 6, 6, 3))
    with pytest.raises(ValueError, match="c_in=3.*5 channels"):
        SharedBasisConv2D(4, basis).build((None, 6, 6, 5))


def test_constraint_with_too_many_filters_is_a_clear_error():
    basis = FilterBasis(10, 3, kernel_constraint=constraints.Orthonormal())
    with pytest.raises(ValueError, match="parts·size <= k_h·k_w·c_in"):
        SharedBasisConv2D(4, basis).build((None, 6, 6, 1))  # 10 > 9
    with pytest.raises(ValueError, match="filters <= fan_in"):
        constraints.Orthonormal()(keras.ops.ones((2, 3)))


def test_regularizer_and_constraint_round_trip_separately():
    reg, con = regularizers.Orthonormal(3.0, normalizer=7), constraints.Orthonormal()
    revived = [keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(o))
               for o in (reg, con)]
    assert type(revived[0]) is regularizers.Orthonormal and revived[0].get_config() == {
        "factor": 3.0, "normalizer": 7.0}
    assert type(revived[1]) is constraints.Orthonormal
