"""GroupLiftConv2D, GroupConv2D, GroupBatchNormalization, GroupPooling and equivariance_error."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_convx import analysis
from keras_convx.layers import E4Conv2D
from keras_convx.layers import GroupBatchNormalization
from keras_convx.layers import GroupConv2D
from keras_convx.layers import GroupLiftConv2D
from keras_convx.layers import GroupPooling
from keras_convx.ops import group as gops
from tests import harness
from tests.oracles import adjoint
from tests.oracles import group as oracle
from tests.oracles import group_any

ORDER = {"p4": 4, "p4m": 8, "c4": 4, "d4": 8, "c8": 8, "d8": 16, "c3": 3, "d3": 6, "c6": 6, "d1": 2}
# Groups with angles off the 90° grid (kernels steered through the basis) or with odd N.
ANY_GROUPS = ["c8", "d8", "c3", "d3", "c6", "d1"]


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])


def _to_cf(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


_cf_oracle = adjoint.channels_first  # a channels_last oracle (and its VJP) for channels_first


# --------------------------------------------------------------------------- static tables


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_tables_match_spec(group):
    n = ORDER[group]
    np.testing.assert_array_equal(gops.group_permutation(group), oracle.table(group))
    w = np.arange(25).reshape(5, 5)
    for g in range(n):
        np.testing.assert_array_equal(w.reshape(-1)[gops.kernel_permutation(group, 5)[g]],
                                      oracle.transform(w, g).reshape(-1))


@pytest.mark.parametrize("group", ANY_GROUPS + ["c1", "d2", "c4", "d4", "c5"])
def test_group_table_matches_the_matrix_definition(group):
    np.testing.assert_array_equal(gops.group_permutation(group), group_any.table(group))
    assert gops.group_order(group) == group_any.order(group)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_steered_kernels_form_an_exact_orbit(k):
    # The kernels of all elements are one group orbit: T_g(T_h(w)) = T_{gh}(w) (float64),
    # element g + 2 of c8 is rot90 of element g, and the mirror commutes as in the group.
    for group in ("c8", "d8", "d3"):
        n = gops.group_order(group)
        maps, src = gops.kernel_maps(group, k), gops.kernel_permutation(group, k)
        w = np.random.default_rng(k).standard_normal(k * k)
        moved = [(maps @ w)[src[g]] for g in range(n)]
        for g in range(n):
            for h in range(n):
                twice = (maps @ moved[h])[src[g]]
                np.testing.assert_allclose(twice, moved[gops.compose(group, g, h)], atol=1e-12)
        if group == "c8":
            for g in range(n):
                np.testing.assert_array_equal(moved[(g + 2) % n], np.rot90(moved[g].reshape(k, k)).reshape(-1))


@pytest.mark.parametrize("cls, fields", [(GroupLiftConv2D, 2), (GroupConv2D, 2)])
@pytest.mark.parametrize("alias, group", [("c4", "p4"), ("d4", "p4m")])
def test_c4_and_d4_are_p4_and_p4m_bit_for_bit(cls, fields, alias, group):
    channels = fields if cls is GroupLiftConv2D else fields * ORDER[group]
    x = np.random.default_rng(11).standard_normal((2, 7, 7, channels)).astype("float32")
    a, b = cls(3, 3, group=alias), cls(3, 3, group=group)
    a.build(x.shape)
    b.build(x.shape)
    _randomize(a)
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(harness.to_numpy(a(x)), harness.to_numpy(b(x)))
    assert a.get_config()["group"] == alias


# Hand-computed goldens, independent of every table in the package and in the oracle.
# A 5×5 one-hot kernel at row 0, col 1 (offset (-2, -1) from the centre) correlated with a
# delta at the centre of a 9×9 image ("same" padding) puts its 1 at centre − offset of the
# element's kernel. Worked by hand from the spec: rot90 (counter-clockwise, np.rot90) moves
# offset (dy, dx) to (-dx, dy); element i ≥ 4 is rot90^(7−i) of the transpose, which moves
# (dy, dx) to (dx, dy) first. The 8 offsets are all different, so each element's kernel
# has exactly one place to land.
GOLDEN_LANDING = [(6, 5), (3, 6), (2, 3), (5, 2), (6, 3), (3, 2), (2, 5), (5, 6)]


def _one_hot_5x5(cin, cout, channel):
    kernel = np.zeros((5, 5, cin, cout), "float32")
    kernel[0, 1, channel, 0] = 1.0
    return kernel


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_lifted_one_hot_kernel_lands_where_computed_by_hand(group):
    n = ORDER[group]
    layer = GroupLiftConv2D(1, 5, group=group, padding="same", use_bias=False)
    x = np.zeros((1, 9, 9, 1), "float32")
    x[0, 4, 4, 0] = 1.0
    layer.build(x.shape)
    layer.set_weights([_one_hot_5x5(1, 1, 0)])
    y = harness.to_numpy(layer(x))[0]
    expected = np.zeros((9, 9, n), "float32")
    for g in range(n):
        expected[(*GOLDEN_LANDING[g], g)] = 1.0
    np.testing.assert_array_equal(y, expected)


def _composed(g, s):
    """The element h whose kernel transform is T_g(T_s(·)), found by applying the spec's
    transforms to an asymmetric array (no table involved)."""
    a = np.arange(9).reshape(3, 3)
    target = oracle.transform(oracle.transform(a, s), g)
    (h,) = [h for h in range(8) if np.array_equal(oracle.transform(a, h), target)]
    return h


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_group_conv_one_hot_kernel_reads_the_composed_orientation(group):
    # A one-hot kernel in input-element slot s: output element g applies kernel T_g (lands
    # at GOLDEN_LANDING[g]) to input element g·s, the element with T_{g·s} = T_g ∘ T_s (for
    # s = 0: its own orientation). The input holds a centre delta of amplitude h + 1 in
    # input element h, so output g must be g·s + 1 at GOLDEN_LANDING[g] and zero elsewhere.
    n = ORDER[group]
    x = np.zeros((1, 9, 9, n), "float32")
    x[0, 4, 4, :] = np.arange(1, n + 1)
    for s in range(n):
        layer = GroupConv2D(1, 5, group=group, padding="same", use_bias=False)
        layer.build(x.shape)
        layer.set_weights([_one_hot_5x5(n, 1, s)])
        y = harness.to_numpy(layer(x))[0]
        expected = np.zeros((9, 9, n), "float32")
        for g in range(n):
            expected[(*GOLDEN_LANDING[g], g)] = _composed(g, s) + 1
        np.testing.assert_array_equal(y, expected, err_msg=f"kernel slot {s}")


def test_p4m_kernel_transforms_form_the_dihedral_group():
    # The 8 transforms of an asymmetric kernel are all different and closed under composition.
    w = np.arange(9).reshape(3, 3)
    images = {oracle.transform(w, g).tobytes() for g in range(8)}
    assert len(images) == 8
    for g in range(8):
        for h in range(8):
            assert oracle.transform(oracle.transform(w, g), h).tobytes() in images


# --------------------------------------------------------------------------- oracle agreement

LIFT_CASES = [
    ("p4", dict(kernel_size=3), (2, 7, 7, 2)),
    ("p4m", dict(kernel_size=3), (2, 6, 6, 1)),
    ("p4", dict(kernel_size=5, strides=2), (1, 8, 9, 2)),
    ("p4m", dict(kernel_size=3, padding="valid", use_bias=False), (2, 6, 7, 2)),
    ("c8", dict(kernel_size=3), (1, 6, 6, 2)),
    ("d8", dict(kernel_size=3), (1, 5, 5, 1)),
    ("d3", dict(kernel_size=5, strides=2, padding="valid"), (1, 9, 8, 1)),
]
GCONV_CASES = [
    ("p4", dict(kernel_size=3), (2, 6, 6, 2 * 4)),
    ("p4m", dict(kernel_size=3), (1, 5, 5, 2 * 8)),
    ("p4", dict(kernel_size=1), (2, 5, 4, 3 * 4)),
    ("p4m", dict(kernel_size=1, use_bias=False), (1, 4, 4, 2 * 8)),
    ("p4", dict(kernel_size=5, strides=2, padding="valid"), (1, 9, 8, 2 * 4)),
    ("p4m", dict(kernel_size=3, strides=2), (1, 6, 7, 1 * 8)),
    ("c8", dict(kernel_size=3), (1, 5, 5, 1 * 8)),
    ("d8", dict(kernel_size=3, use_bias=False), (1, 4, 4, 1 * 16)),
    ("d3", dict(kernel_size=5, strides=2), (1, 6, 6, 1 * 6)),
    ("c6", dict(kernel_size=1, use_bias=False), (1, 4, 4, 2 * 6)),
]


def _conv_oracle(layer, fn):
    cfg = layer.get_config()
    args = (cfg["group"], cfg["strides"], cfg["padding"])
    lifting = fn is oracle.lift_conv
    return adjoint.with_vjp(
        lambda x, w: fn(x, w, *args),
        lambda x, w, cot: adjoint.group_conv_vjp(x, w, cot, args[0], lifting, *args[1:]))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "cls, fn, case",
    [(GroupLiftConv2D, oracle.lift_conv, c) for c in LIFT_CASES]
    + [(GroupConv2D, oracle.group_conv, c) for c in GCONV_CASES],
)
def test_conv_matches_oracle(cls, fn, case, data_format):
    group, kwargs, shape = case
    layer = cls(3, group=group, data_format=data_format, **kwargs)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    fn_ = _conv_oracle(layer, fn)
    if data_format == "channels_first":
        x, fn_ = _to_cf(x), _cf_oracle(fn_)
    layer.build(x.shape)
    _randomize(layer)
    harness.assert_matches_oracle(layer, x, fn_, atol=1e-4, rtol=1e-5, grad_rtol=1e-3, grad_atol=1e-3)


@pytest.mark.parametrize("group", ["p4", "p4m", "c8", "d3"])
def test_equivalent_conv_folds_into_conv2d(group):
    n = ORDER[group]
    layer = GroupConv2D(3, 3, group=group)
    x = np.random.default_rng(2).standard_normal((2, 7, 7, 2 * n)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)
    conv = keras.layers.Conv2D(3 * n, 3, padding="same")
    conv.build(x.shape)
    conv.set_weights([harness.to_numpy(w) for w in layer.equivalent_conv()])
    np.testing.assert_allclose(harness.to_numpy(conv(x)), harness.to_numpy(layer(x)), atol=1e-5)


def test_group_batch_norm_matches_oracle_and_updates_moving_statistics():
    layer = GroupBatchNormalization("p4m", momentum=0.9, epsilon=1e-3)
    x = np.random.default_rng(3).standard_normal((3, 5, 5, 2 * 8)).astype("float32") * 2 + 1
    layer.build(x.shape)
    rng = np.random.default_rng(4)
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    y = harness.to_numpy(layer(x, training=True))
    expected, mean, var = oracle.group_batch_norm(x.astype(np.float64), gamma, beta, "p4m", 1e-3)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    np.testing.assert_allclose(harness.to_numpy(layer.moving_mean), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(harness.to_numpy(layer.moving_variance), 0.9 + 0.1 * var, atol=1e-5)
    # inference uses the moving statistics
    mm, mv = harness.to_numpy(layer.moving_mean), harness.to_numpy(layer.moving_variance)
    inference = harness.to_numpy(layer(x, training=False))
    fields = x.reshape(3, 5, 5, 2, 8)
    manual = (fields - mm[:, None]) / np.sqrt(mv[:, None] + 1e-3) * gamma[:, None] + beta[:, None]
    np.testing.assert_allclose(inference, manual.reshape(x.shape), atol=1e-4)


def test_group_batch_norm_gradients_match_oracle():
    layer = GroupBatchNormalization("p4")
    x = np.random.default_rng(5).standard_normal((2, 3, 3, 2 * 4)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)

    def fn(x_, w):
        return oracle.group_batch_norm(x_, w["gamma"], w["beta"], "p4", 1e-3)[0]

    harness.assert_matches_oracle(layer, x, fn, call_kwargs={"training": True}, atol=1e-4,
                                  grad_rtol=1e-3, grad_atol=1e-3)


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_group_pooling(pooling, data_format):
    x = np.random.default_rng(6).standard_normal((2, 4, 4, 3 * 8)).astype("float32")
    reduce = np.max if pooling == "max" else np.mean
    expected = reduce(x.reshape(2, 4, 4, 3, 8), axis=-1)
    if data_format == "channels_first":
        x, expected = _to_cf(x), _to_cf(expected)
    y = GroupPooling("p4m", pooling=pooling, data_format=data_format)(x)
    np.testing.assert_allclose(harness.to_numpy(y), expected, atol=1e-6)


# --------------------------------------------------------------------------- equivariance


def test_analysis_transform_matches_the_spec_actions():
    y = np.random.default_rng(7).standard_normal((2, 5, 5, 3 * 8))
    np.testing.assert_array_equal(analysis.transform(y, "r", "p4m"), oracle.rotate_group_map(y, "p4m"))
    np.testing.assert_array_equal(analysis.transform(y, "m", "p4m"), oracle.mirror_group_map(y))
    y4 = y[..., :12]
    np.testing.assert_array_equal(analysis.transform(y4, "rr", "p4"),
                                  oracle.rotate_group_map(oracle.rotate_group_map(y4, "p4"), "p4"))


@pytest.mark.parametrize("group", ["p4", "p4m", "c8", "d3"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "make, fields_in",
    [
        (lambda g, df: GroupLiftConv2D(3, 5, group=g, data_format=df), None),
        (lambda g, df: GroupConv2D(3, 3, group=g, data_format=df), 2),
        (lambda g, df: GroupConv2D(3, 1, group=g, data_format=df), 2),
        (lambda g, df: GroupBatchNormalization(g, data_format=df), 2),
        (lambda g, df: GroupPooling(g, data_format=df), 2),
    ],
)
def test_every_group_layer_is_equivariant(make, fields_in, group, data_format):
    n = ORDER[group]
    layer = make(group, data_format)
    channels = 2 if fields_in is None else fields_in * n
    x = np.random.default_rng(8).standard_normal((2, 9, 9, channels)).astype("float32")
    if data_format == "channels_first":
        x = _to_cf(x)
    layer.build(x.shape)
    _randomize(layer)
    if isinstance(layer, GroupBatchNormalization):
        layer.moving_variance.assign(np.abs(harness.to_numpy(layer.moving_variance)) + 0.5)
    # every element for p4/p4m; the exact subgroup (90° rotations, grid mirrors) of c8/d3
    errors = analysis.equivariance_error(layer, x, group, per_element=True, elements="exact")
    assert len(errors) == {"c8": 4, "d3": 2}.get(group, n)
    assert max(errors.values()) <= 1e-5, errors


@settings(max_examples=12, deadline=None, derandomize=True)
@given(group=st.sampled_from(["p4", "p4m"] + ANY_GROUPS), lift=st.booleans(), size=st.integers(3, 9),
       fields=st.integers(1, 3), kernel_size=st.sampled_from([1, 3, 5]),
       padding=st.sampled_from(["same", "valid"]), seed=st.integers(0, 2**16))
def test_group_convs_are_equivariant_for_drawn_shapes_and_weights(group, lift, size, fields,
                                                                   kernel_size, padding, seed):
    if padding == "valid" and kernel_size > size:
        return
    n = ORDER[group]
    cls = GroupLiftConv2D if lift else GroupConv2D
    layer = cls(2, kernel_size, group=group, padding=padding, use_bias=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, size, size, fields if lift else fields * n)).astype("float32")
    layer.build(x.shape)
    _randomize(layer, seed)
    assert analysis.equivariance_error(layer, x, group, elements="exact") <= 1e-5


def _smooth_disc_images(count, size, seed):
    """Sums of Gaussian blobs, zero outside the inscribed disc."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.zeros((count, size, size, 1))
    for b in range(count):
        for _ in range(6):
            r, a, s = rng.uniform(0, 0.6 * c), rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3)
            out[b, :, :, 0] += rng.normal() * np.exp(
                -((yy - c - r * np.sin(a)) ** 2 + (xx - c - r * np.cos(a)) ** 2) / (2 * s * s))
    return (out * ((yy - c) ** 2 + (xx - c) ** 2 <= (c - 1) ** 2)[None, :, :, None]).astype("float32")


def _invariant_net(group, size):
    inputs = keras.Input((size, size, 1))
    if group is None:
        x = keras.layers.Conv2D(8, 5, padding="same", activation="relu")(inputs)
        x = keras.layers.Conv2D(8, 5, padding="same", activation="relu")(x)
    else:
        x = GroupLiftConv2D(4, 5, group=group, activation="relu")(inputs)
        x = GroupPooling(group)(GroupConv2D(4, 5, group=group, activation="relu")(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_c8_and_d8_networks_are_nearly_invariant_at_45_degrees():
    # Off the 90° grid only interpolation separates f(g·x) from f(x): on smooth disc-masked
    # inputs the c8/d8 networks' invariant features move several times less than a plain
    # CNN's or a p4 network's at 45°.
    x = _smooth_disc_images(4, 25, seed=0)
    odd = ["r", "rrr", "rrrrr", "rrrrrrr"]
    errors = {}
    for group in (None, "p4", "c8", "d8"):
        keras.utils.set_random_seed(1)
        # d8 is measured on all its elements, the mirrors off the grid included
        acting = "d8" if group == "d8" else "c8"
        per = analysis.equivariance_error(_invariant_net(group, 25), x, acting, input_type="image",
                                          output_type="invariant", per_element=True)
        errors[group] = max(per[w] for w in odd + (["m" + w for w in odd] if group == "d8" else []))
        if group:
            exact = [w for w in per if w.count("r") % 2 == 0 and w]
            assert max(per[w] for w in exact) <= 1e-5, (group, per)
    assert errors["c8"] < 0.4 * errors[None] and errors["d8"] < 0.4 * errors[None], errors
    assert errors["c8"] < 0.75 * errors["p4"], errors
    # A group-map output at 45° (compared inside the disc, channels permuted by the element):
    # a c8 lifting conv against a plain conv read as an image map (measured 0.011 vs 0.38).
    keras.utils.set_random_seed(1)
    lift, conv = GroupLiftConv2D(4, 5, group="c8"), keras.layers.Conv2D(32, 5, padding="same")
    maps = [analysis.equivariance_error(layer, x, "c8", output_type=kind, per_element=True)
            for layer, kind in ((lift, "group"), (conv, "image"))]
    assert maps[0]["rr"] <= 1e-5 and maps[0]["r"] < 0.1 * maps[1]["r"], maps


def test_e4_on_c8_keeps_its_parameter_saving():
    e4 = E4Conv2D(16, 5, group="c8", reduction_ratio=1, slices=2)
    conv = GroupConv2D(16, 5, group="c8")
    for layer in (e4, conv):
        layer.build((None, 9, 9, 16 * 8))
    assert e4.count_params() < 0.2 * conv.count_params(), (e4.count_params(), conv.count_params())


def test_equivariance_error_detects_a_plain_conv():
    layer = keras.layers.Conv2D(4, 3, padding="same")
    x = np.random.default_rng(9).standard_normal((2, 9, 9, 2)).astype("float32")
    assert analysis.equivariance_error(layer, x, "p4", output_type="image") > 0.3


def test_equivariance_error_detects_per_channel_batch_norm():
    # Ordinary BatchNormalization with different per-orientation statistics breaks equivariance.
    layer = keras.layers.BatchNormalization()
    x = np.random.default_rng(10).standard_normal((2, 9, 9, 4)).astype("float32")
    layer.build(x.shape)
    layer.moving_mean.assign([0.0, 1.0, 2.0, 3.0])
    assert analysis.equivariance_error(layer, x, "p4", input_type="group", output_type="group") > 0.3


def test_equivariance_error_bad_arguments():
    layer = GroupConv2D(2, 3)
    x = np.zeros((1, 5, 5, 4), "float32")
    with pytest.raises(ValueError, match="group"):
        analysis.equivariance_error(layer, x, "q8")
    with pytest.raises(ValueError, match=r"group='c8'.*multiple of \|G\| = 8"):
        analysis.equivariance_error(layer, x, "c8")
    with pytest.raises(ValueError, match="elements"):
        analysis.equivariance_error(layer, x, "p4", elements="some")
    with pytest.raises(ValueError, match="square"):
        analysis.equivariance_error(layer, np.zeros((1, 5, 6, 4), "float32"), "p4")
    with pytest.raises(ValueError, match="output_type"):
        analysis.equivariance_error(layer, x, "p4", output_type="vector")


# --------------------------------------------------------------------------- layer contract


@pytest.mark.parametrize(
    "cls, kwargs, shape, params",
    [
        (GroupLiftConv2D, dict(filters=4, kernel_size=3, group="p4"), (2, 8, 8, 3), 3 * 3 * 3 * 4 + 4),
        (GroupConv2D, dict(filters=3, kernel_size=3, group="p4m"), (2, 6, 6, 2 * 8), 9 * 16 * 3 + 3),
        (GroupConv2D, dict(filters=3, kernel_size=1, group="p4", strides=2, use_bias=False), (2, 6, 6, 8), 8 * 3),
        (GroupBatchNormalization, dict(group="p4"), (2, 5, 5, 12), 2 * 3),
        (GroupBatchNormalization, dict(group="p4", synchronized=True), (2, 5, 5, 12), 2 * 3),
        (GroupPooling, dict(group="p4m", pooling="mean"), (2, 5, 5, 16), 0),
        (GroupLiftConv2D, dict(filters=2, kernel_size=3, group="d8"), (2, 6, 6, 3), 3 * 3 * 3 * 2 + 2),
        (GroupConv2D, dict(filters=2, kernel_size=3, group="c3"), (2, 5, 5, 2 * 3), 9 * 6 * 2 + 2),
        (GroupBatchNormalization, dict(group="d3"), (2, 5, 5, 12), 2 * 2),
    ],
)
def test_layer_contract(cls, kwargs, shape, params):
    layer = harness.run_layer_test(cls, kwargs, shape)
    trainable = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    assert trainable == params


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GroupConv2D(4, 3, group="c0"), r"group 'cN' or 'dN' with N >= 1"),
        (lambda: GroupConv2D(4, 3, group="d-2"), r"'cN' .*'dN' .*N >= 1.*group='d-2'"),
        (lambda: GroupConv2D(4, 3, group="e8"), "group='e8'"),
        (lambda: GroupConv2D(4, 3, group="c100000"), r"N <= 256.*group='c100000'"),
        (lambda: GroupLiftConv2D(4, 3, group=8), "group=8"),
        (lambda: E4Conv2D(4, 3, group="c8.5"), "group"),
        (lambda: GroupBatchNormalization("x4"), "group"),
        (lambda: GroupConv2D(4, 4), "kernel_size"),
        (lambda: GroupLiftConv2D(4, (3, 5)), "kernel_size"),
        (lambda: GroupConv2D(0, 3), "filters"),
        (lambda: GroupConv2D(4, 3, padding="full"), "padding"),
        (lambda: GroupBatchNormalization("p4", momentum=1.5), "momentum"),
        (lambda: GroupPooling("p4", pooling="sum"), "pooling"),
        (lambda: GroupPooling("p6"), "group"),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_synchronized_must_be_a_bool():
    with pytest.raises(TypeError, match="synchronized"):
        GroupBatchNormalization("p4", synchronized="yes")


def test_group_input_with_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match="multiple of"):
        GroupConv2D(2, 3, group="p4m")(np.zeros((1, 5, 5, 12), "float32"))
    with pytest.raises(ValueError, match=r"group='c3'.*multiple of \|G\| = 3"):
        GroupConv2D(2, 3, group="c3")(np.zeros((1, 5, 5, 8), "float32"))
    with pytest.raises(ValueError, match=r"multiple of \|G\| = 16"):
        GroupPooling("d8")(np.zeros((1, 5, 5, 24), "float32"))
    with pytest.raises(TypeError, match="filters"):
        GroupLiftConv2D(2.5, 3)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="only TensorFlow traces with unknown static dimensions")
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_traced_shapes_keep_the_static_channel_count(data_format):
    """Inside a tf.function with an unknown batch (as in TensorFlow's fit) every group layer's
    output keeps its static channel count (a reshape to −1 lost it once)."""
    import tensorflow as tf  # noqa: PLC0415

    layers = [GroupLiftConv2D(3, 3, group="p4m", data_format=data_format),
              GroupBatchNormalization(group="p4m", data_format=data_format),
              GroupConv2D(2, 3, group="p4m", data_format=data_format),
              GroupPooling(group="p4m", data_format=data_format)]
    shape = (8, 8, 2) if data_format == "channels_last" else (2, 8, 8)
    seen = []

    def forward(x):
        for layer in layers:
            x = layer(x)
            seen.append(tuple(x.shape))
        return x

    tf.function(forward, input_signature=[tf.TensorSpec((None, *shape), tf.float32)]).get_concrete_function()
    axis = 3 if data_format == "channels_last" else 1
    assert [s[axis] for s in seen[-4:]] == [24, 24, 16, 2]  # (the function may be traced twice)
