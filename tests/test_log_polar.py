"""LogPolarConv2D and keras_convx.ops.log_polar_regions."""

import math

import keras
import numpy as np
import pytest

from keras_convx import ops
from keras_convx.layers import LogPolarConv2D
from keras_convx.layers.log_polar import from_official_weights
from keras_convx.ops import log_polar as lp
from keras_convx.ops.autodiff import input_gradient
from keras_convx.ops.core import matmul_last
from tests import harness
from tests.oracles import adjoint
from tests.oracles import log_polar as oracle

# --------------------------------------------------------------------------- region maps


def test_golden_region_map_from_spec():
    ring, sector = ops.log_polar_regions(5, rings=2, sectors=6, growth_rate=3)
    np.testing.assert_array_equal(lp.ring_thresholds(5, 2, 3), [2, 18])
    assert ["".join(map(str, r)) for r in ring] == ["11111", "10001", "10001", "10001", "11111"]
    assert ["".join(map(str, r)) for r in sector] == ["21110", "22100", "33000", "33455", "34445"]
    np.testing.assert_array_equal(
        lp.region_sizes(ring, sector, 2, 6), [[3, 1, 1, 2, 1, 1], [3, 3, 2, 3, 3, 2]]
    )


def test_hand_computed_quadrants():
    # 3×3, one ring, 4 sectors: boundary angles (π/2 above, π left, 3π/2 below) go up.
    ring, sector = ops.log_polar_regions(3, rings=1, sectors=4, growth_rate=2)
    np.testing.assert_array_equal(sector, [[1, 1, 0], [2, 0, 0], [2, 3, 3]])
    np.testing.assert_array_equal(ring, np.zeros((3, 3)))


def test_hand_computed_elliptical_window():
    # 3×5: R = 2, thresholds [2, 8]; rows ±1 have dy²/(3/5)² = 2.78 > 2.
    ring, _ = ops.log_polar_regions((3, 5), rings=2, sectors=1, growth_rate=2)
    np.testing.assert_array_equal(ring, [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]])


def test_initial_angle_rotates_sectors():
    # A quarter turn with 4 sectors moves every off-centre pixel to the next sector.
    _, s0 = ops.log_polar_regions(7, 2, 4, 2.0)
    _, s1 = ops.log_polar_regions(7, 2, 4, 2.0, initial_angle=math.pi / 2 + 0.01)
    off = np.ones((7, 7), bool)
    off[3, 3] = False
    np.testing.assert_array_equal(s1[off], (s0[off] + 1) % 4)


CONFIGS = [
    (k, rings, sectors, g, phi)
    for k in (3, 5, 9, 11, (5, 9), (9, 5), (7, 3))
    for rings, sectors, g in ((1, 4, 2.0), (2, 6, 3.0), (2, 8, 2.0), (3, 8, 2.0), (3, 12, 1.5), (2, 5, 2.5))
    for phi in (0.0, math.pi / 4, 0.3, -1.0)
]


@pytest.mark.parametrize("k, rings, sectors, g, phi", CONFIGS[:: 1 if keras.backend.backend() == "jax" else 7])
def test_region_map_matches_independent_transcription(k, rings, sectors, g, phi):
    ring, sector = ops.log_polar_regions(k, rings, sectors, g, phi)
    o_ring, o_sector = oracle.regions(k, rings, sectors, g, phi)
    np.testing.assert_array_equal(ring, o_ring)
    np.testing.assert_array_equal(sector, o_sector)


def test_region_maps_are_cached_and_read_only():
    a = ops.log_polar_regions(9, 2, 6, 3.0)
    b = ops.log_polar_regions(9, 2, 6, 3.0)
    assert a[0] is b[0]
    with pytest.raises(ValueError):
        a[0][0, 0] = 5


# --------------------------------------------------------------------------- oracle agreement

ORACLE_CASES = [
    # (kwargs, input shape channels_last)
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0), (2, 7, 8, 3)),
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0, strides=2), (2, 8, 7, 3)),
    (dict(kernel_size=9, rings=2, sectors=6, growth_rate=3.0, strides=2), (1, 10, 11, 2)),
    (dict(kernel_size=(5, 7), rings=3, sectors=8, growth_rate=2.0, padding="valid"), (2, 8, 9, 2)),
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=2.0, pooling="sum", center=False), (2, 6, 6, 2)),
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0, groups=2, initial_angle=0.4), (2, 6, 6, 4)),
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0, strides=2, use_bias=False), (2, 7, 7, 2)),
    (dict(kernel_size=(4, 6), rings=2, sectors=4, growth_rate=2.0), (2, 7, 8, 3)),
    (dict(kernel_size=4, rings=2, sectors=4, growth_rate=2.0, strides=(2, 1)), (1, 9, 8, 2)),
]


def _oracle_for(layer):
    cfg = layer.get_config()
    keys = ("kernel_size", "rings", "sectors", "growth_rate", "initial_angle", "strides", "padding",
            "pooling", "groups", "data_format")
    kwargs = {k: cfg[k] for k in keys}
    forward = lambda x, w: oracle.lpsc(x, w, **kwargs)  # noqa: E731
    if cfg["pooling"] == "max":  # a max has no linear adjoint: finite differences
        return forward
    return adjoint.with_vjp(forward, lambda x, w, cot: adjoint.lpsc_vjp(x, w, cot, **kwargs))


def _random_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("implementation", ["dense", "pool"])
@pytest.mark.parametrize("case", range(len(ORACLE_CASES)))
def test_matches_oracle_forward_and_gradients(case, implementation, data_format):
    kwargs, shape = ORACLE_CASES[case]
    layer = LogPolarConv2D(4, implementation=implementation, data_format=data_format, **kwargs)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    layer.build(x.shape)
    _random_weights(layer)
    harness.assert_matches_oracle(layer, x, _oracle_for(layer), rtol=1e-5, atol=2e-5,
                                  grad_rtol=1e-3, grad_atol=1e-3)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_max_pooling_matches_oracle(strides, data_format):
    layer = LogPolarConv2D(3, 5, rings=2, sectors=6, growth_rate=3.0, pooling="max", strides=strides,
                           data_format=data_format)
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 7) if data_format == "channels_first" else (2, 7, 7, 3))
    x = x.astype("float32")
    layer.build(x.shape)
    _random_weights(layer)
    assert layer.resolved_implementation() == "max"
    harness.assert_matches_oracle(layer, x, _oracle_for(layer), grad_rtol=1e-3, grad_atol=1e-3)


def test_fast_path_equals_reference_forward_and_gradients(opt_in_fast_paths, caplog):
    """Every backend has a fast region-pooling path; it agrees with the keras.ops reference
    ("mean" and "max" pooling). On torch (torch.compile) both configurations, run in one
    process, stay compiled with two graphs allowed per compiled function (without and with
    the gradient): they would pass torch's limit if they shared one function."""
    assert {"log_polar_region_pool", "log_polar_region_max"} <= set(ops.available_fast_paths())
    x = np.random.default_rng(3).standard_normal((2, 10, 11, 3)).astype("float32")
    with harness.torch_compile_stays_compiled(caplog, limit=2):
        for pooling in ("mean", "max"):
            layer = LogPolarConv2D(5, 5, rings=2, sectors=6, growth_rate=3.0, strides=2,
                                   pooling=pooling,
                                   implementation="pool" if pooling == "mean" else "max")
            _assert_dispatched_equals_reference(layer, x, seed=4)


def _assert_dispatched_equals_reference(layer, x, seed):
    """The layer as dispatched (fast paths) equals itself in reference mode: forward, input
    and weight gradients for one random cotangent."""
    layer.build(x.shape)
    cot = np.random.default_rng(seed).standard_normal(layer.compute_output_shape(x.shape))
    cot = cot.astype("float32")
    fast_y = harness.to_numpy(layer(x))
    fast_dx, fast_dw = harness.layer_gradients(layer, x, cot)
    with ops.reference_mode():
        ref_y = harness.to_numpy(layer(x))
        ref_dx, ref_dw = harness.layer_gradients(layer, x, cot)
    np.testing.assert_allclose(fast_y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast_dx, ref_dx, rtol=1e-4, atol=1e-4)
    for name in ref_dw:
        np.testing.assert_allclose(fast_dw[name], ref_dw[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("band_bytes", [None, 64])
@pytest.mark.parametrize("pooling, kwargs", [
    ("mean", dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0)),
    ("sum", dict(kernel_size=(5, 7), rings=3, sectors=8, growth_rate=2.0, center=False,
                 padding="valid"))])
def test_stride_one_pool_path_equals_reference_forward_and_gradients(pooling, kwargs, band_bytes,
                                                                      monkeypatch):
    """The stride-1 pooling + mixing (on the jax and tensorflow CPU by bands of rows, pooled maps
    made again in the backward pass; `band_bytes=64` forces 2-row bands, and 9 rows leave a partial one)
    agrees with the keras.ops reference, forward and gradients."""
    if band_bytes is not None:
        monkeypatch.setattr(ops.group, "BAND_BYTES", band_bytes)
    layer = LogPolarConv2D(4, pooling=pooling, implementation="pool", **kwargs)
    x = np.random.default_rng(6).standard_normal((2, 11, 10, 3)).astype("float32")
    _assert_dispatched_equals_reference(layer, x, seed=7)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch pools the whole image")
def test_tiled_pool_path_never_holds_the_whole_pooled_tensor(monkeypatch):
    """A training step through two pool-path layers (after a 1×1 stem) with the pooling +
    mixing in bands (2 rows on jax, 3 on tensorflow) keeps less than half of what it keeps
    with the whole pooled tensor (13 times the input per layer): jax's XLA temp bytes 5.0
    against 24.9 MB measured, tensorflow's allocator peak 5.2 against 28.1 MB (a band's pooled
    maps, ~0.5 MB, are above the 256 KiB under which its oneDNN allocator does not count
    blocks, so bands made all at once or kept would count)."""
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((8, 48, 48, 8)).astype("float32"))
    kept = {}
    for band_bytes in (2**16, 2**30):  # bands; never tiled
        monkeypatch.setattr(ops.group, "BAND_BYTES", band_bytes)
        kept[band_bytes] = harness.kept_for_backward_bytes(
            harness.recompute_stack(_lpsc("pool"), False, 8, depth=2, size=48), x)
    assert kept[2**16] < 0.5 * kept[2**30], kept


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tensorflow's bands")
def test_tensorflow_bands_step_aside_inside_a_whole_xla_compilation(monkeypatch):
    """Traced for graph mode the pooling + mixing runs by bands; traced inside a function XLA
    compiles whole (`jit_compile=True`) it does not (XLA scheduled the bands together: more
    memory and time than the whole pooled tensor)."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    monkeypatch.setattr(ops.group, "BAND_BYTES", 64)
    calls, original = [], ops.group.band_rows
    monkeypatch.setattr(ops.group, "band_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = LogPolarConv2D(8, 5, rings=2, sectors=6, growth_rate=3.0, implementation="pool")
    x = tf.constant(np.random.default_rng(1).standard_normal((2, 11, 9, 8)).astype("float32"))
    layer.build(x.shape)
    counts = {}
    for jit in (False, True):
        calls.clear()
        tf.function(lambda x: layer(x), jit_compile=jit)(x)
        counts[jit] = len(calls)
    assert counts[False] >= 1 and counts[True] == 0, counts


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch pools the whole image")
@pytest.mark.parametrize("jit_compile, policy, recompute",
                         [(False, "float32", True), (True, "mixed_bfloat16", False),
                          (True, "float32", True)])
def test_tiled_pool_path_trains_like_the_reference(jit_compile, policy, recompute, monkeypatch):
    """`fit` with the pooling + mixing forced into 2-row bands (`BAND_BYTES=64`; 11 rows leave
    a partial one: tensorflow's bands, jax's tiled loop), inside a recomputed layer too, after
    a 1×1 stem moves every weight as the `keras.ops` reference does
    (`harness.check_fit_matches_reference`)."""
    monkeypatch.setattr(ops.group, "BAND_BYTES", 64)
    harness.check_fit_matches_reference(
        lambda policy: LogPolarConv2D(8, 5, rings=2, sectors=6, growth_rate=3.0,
                                      implementation="pool", recompute=recompute, dtype=policy),
        (11, 9, 8), jit_compile, policy, ops.reference_mode)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
@pytest.mark.parametrize("kernel_size, rings, sectors, g", [((5, 7), 3, 8, 2.0), (9, 2, 6, 3.0)])
def test_written_pool_gradient_is_the_oracle_poolings_adjoint(pooling, kernel_size, rings, sectors, g):
    """The written-out stride-1 gradient of region pooling (TensorFlow's and jax's fast paths) equals the
    adjoint of the oracle's pooling (tests/oracles/adjoint.py, itself checked against finite
    differences in tests/test_oracles.py), on every backend."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    pmatrix = lp.pooling_matrix((kh, kw), rings, sectors, g, 0.0, pooling, True)
    shape = (1, kh + 3, kw + 2, 2)
    cot = np.random.default_rng(5).standard_normal((1, 4, 3, pmatrix.shape[1], 2))

    def oracle_pool(x):  # → (B, Ho, Wo, R', C) in keras_convx's region-major order
        regions, centre = oracle.pooled_regions(x, (kh, kw), rings, sectors, g, padding="valid",
                                                pooling=pooling)
        regions = np.moveaxis(regions.reshape(*regions.shape[:4], -1), -1, 3)
        return np.concatenate([regions, centre[:, :, :, None]], axis=3)

    regions = rings * sectors  # cot is region-major: (B, Ho, Wo, regions + centre, C)
    d_pooled = np.moveaxis(cot[:, :, :, :regions], 3, -1).reshape(*cot.shape[:3], shape[-1],
                                                                    rings, sectors)
    expected = adjoint.pooled_regions_vjp(shape, d_pooled, cot[:, :, :, regions], (kh, kw),
                                          rings, sectors, g, padding="valid", pooling=pooling)
    x = np.random.default_rng(6).standard_normal(shape).astype("float32")
    cot_t = keras.ops.convert_to_tensor(cot.astype("float32"))

    def pooled(a, written):
        return lp.pool_by_slices(a, pmatrix, (kh, kw), (1, 1), pooling, written_gradient=written)

    np.testing.assert_allclose(harness.to_numpy(pooled(keras.ops.convert_to_tensor(x), True)),
                               oracle_pool(x.astype("float64")), rtol=1e-5, atol=1e-5)
    for written in (True, False):
        grad = input_gradient(lambda a: pooled(a, written) * cot_t,
                                           keras.ops.convert_to_tensor(x))
        np.testing.assert_allclose(harness.to_numpy(grad), expected, rtol=1e-5, atol=1e-5)


def test_matmul_last_is_a_matmul_over_the_last_axis():
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 3, 4, 5)).astype("float32"), rng.standard_normal((5, 6)).astype("float32")
    for portable in (False, True):
        with ops.portable_mode(portable):
            y = harness.to_numpy(matmul_last(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(w)))
        np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="only TensorFlow traces with unknown static dimensions")
def test_matmul_last_with_an_unknown_last_axis_in_a_traced_function():
    """Inside TensorFlow's fit, a layer's input can have an unknown channel axis (it broke the
    E4 layer in the guides once): K is taken from the weight."""
    import tensorflow as tf  # noqa: PLC0415

    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 3, 4, 5)).astype("float32"), rng.standard_normal((5, 6)).astype("float32")
    traced = tf.function(lambda a: matmul_last(a, tf.constant(w)),
                         input_signature=[tf.TensorSpec((None, 3, 4, None), tf.float32)])
    np.testing.assert_allclose(traced(x).numpy(), x @ w, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("k, rings, sectors, g", [(9, 2, 6, 3.0), (11, 3, 8, 2.0), (5, 2, 6, 3.0)])
def test_parameter_count(k, rings, sectors, g):
    layer = LogPolarConv2D(7, k, rings=rings, sectors=sectors, growth_rate=g)
    layer.build((None, 16, 16, 5))
    assert layer.count_params() == 5 * 7 * (rings * sectors + 1) + 7
    layer = LogPolarConv2D(7, k, rings=rings, sectors=sectors, growth_rate=g, center=False, use_bias=False)
    layer.build((None, 16, 16, 5))
    assert layer.count_params() == 5 * 7 * rings * sectors


@pytest.mark.parametrize("implementation", ["dense", "pool"])
def test_one_output_pixel_sees_the_whole_window(implementation):
    layer = LogPolarConv2D(1, 9, rings=2, sectors=6, growth_rate=3.0, implementation=implementation)
    layer.build((1, 15, 15, 1))
    _random_weights(layer)
    cot = np.zeros((1, 15, 15, 1), "float32")
    cot[0, 7, 7, 0] = 1.0
    dx, _ = harness.layer_gradients(layer, np.ones((1, 15, 15, 1), "float32"), cot)
    support = np.abs(dx[0, :, :, 0]) > 0
    expected = np.zeros((15, 15), bool)
    expected[3:12, 3:12] = True
    np.testing.assert_array_equal(support, expected)


def test_equivalent_conv_kernel_is_region_constant():
    layer = LogPolarConv2D(2, 9, rings=2, sectors=6, growth_rate=3.0, pooling="sum", center=False)
    layer.build((None, 9, 9, 1))
    kernel = harness.to_numpy(layer.equivalent_conv()[0])[..., 0, 0]
    ring, sector = layer.regions
    w = harness.to_numpy(layer.kernel)[..., 0, 0]
    np.testing.assert_allclose(kernel, w[ring, sector], rtol=1e-6)


def test_official_weight_import_reproduces_official_forward():
    rings, sectors, cin, cout = 2, 6, 3, 4
    rng = np.random.default_rng(5)
    tile = rng.standard_normal((cout, cin, 2 * rings, sectors // 2))
    cw = rng.standard_normal((cout, cin, 1, 1))
    cb = rng.standard_normal(cout)
    x = rng.standard_normal((2, cin, 10, 10))
    expected = oracle.official_tile_forward(x, tile, cw, cb, kernel_size=9, rings=rings, sectors=sectors,
                                            growth_rate=3.0, strides=2)
    layer = LogPolarConv2D(cout, 9, rings=rings, sectors=sectors, growth_rate=3.0, strides=2,
                           data_format="channels_first")
    layer.build(x.shape)
    layer.set_weights([w.astype("float32") for w in from_official_weights(tile, cw, cb)])
    np.testing.assert_allclose(harness.to_numpy(layer(x.astype("float32"))), expected, rtol=1e-4, atol=1e-4)


def test_official_weight_import_rejects_bad_shapes():
    with pytest.raises(ValueError, match="tile_weight"):
        from_official_weights(np.zeros((4, 3, 4)))
    with pytest.raises(ValueError, match="center_weight"):
        from_official_weights(np.zeros((4, 3, 4, 3)), np.zeros((3, 4, 1, 1)))


def test_auto_follows_cost_model():
    stem = LogPolarConv2D(16, 9, rings=2, sectors=6, growth_rate=3.0)
    stem.build((None, 32, 32, 3))
    assert stem.resolved_implementation() == lp.choose_implementation((9, 9), 16, 1, 13)
    # A 3×3 window has fewer taps than regions: the dense kernel is always cheaper.
    small = LogPolarConv2D(64, 3, rings=1, sectors=8, growth_rate=2.0)
    small.build((None, 8, 8, 64))
    assert small.resolved_implementation() == "dense"
    for backend in ("jax", "tensorflow", "torch"):
        # Measured (POOL_COST's note): pooling wins at 64 channels on jax and tensorflow, on
        # torch (opt-in compiled pooling) only from 128 channels on.
        expected = "dense" if backend == "torch" else "pool"
        assert lp.choose_implementation((11, 11), 64, 1, 25, backend, True, "cpu") == expected
        assert lp.choose_implementation((9, 9), 64, 1, 13, backend, True, "cpu") == expected
        assert lp.choose_implementation((9, 9), 128, 1, 13, backend, True, "cpu") == "pool"
        assert lp.choose_implementation((11, 11), 128, 1, 25, backend, True, "cpu") == "pool"
        # Re-measured (issue 27): tensorflow's pooling is faster from 16 channels on (9×9).
        if backend == "tensorflow":
            for filters in (16, 32):
                assert lp.choose_implementation((9, 9), filters, 1, 13, backend, True,
                                                "cpu") == "pool"
        # Without a fast pooling path every backend takes the dense kernel.
        assert lp.choose_implementation((11, 11), 64, 1, 25, backend, False, "cpu") == "dense"
    # Torch's reference pooling (no opt-in): faster than dense in one-layer steps from 64
    # channels on, but 2.0–2.4× slower with the input gradient a network computes (RESULTS.md,
    # "Log-polar auto"): never chosen.
    for filters in (16, 32, 48, 64, 128):
        assert lp.choose_implementation((9, 9), filters, 1, 13, "torch", False, "cpu") == "dense"
        assert lp.choose_implementation((9, 9), 2 * filters, 2, 13, "torch", False, "cpu") == "dense"
    assert lp.choose_implementation((9, 9), 128, 1, 13, "torch", False, "gpu") == "dense"
    with ops.reference_mode():
        assert lp.choose_implementation((9, 9), 128, 1, 13, "torch", False, "cpu") == "dense"
    # GPU (measured on jax): pooling for 9×9 (2,6,3) at every width, dense for 11×11 (3,8,2).
    for filters in (16, 64, 256):
        assert lp.choose_implementation((9, 9), filters, 1, 13, "jax", True, "gpu") == "pool"
        assert lp.choose_implementation((11, 11), filters, 1, 25, "jax", True, "gpu") == "dense"
        for backend, platform in (("torch", "gpu"), ("tensorflow", "gpu"), ("jax", "tpu")):
            assert lp.choose_implementation((9, 9), filters, 1, 13, backend, True,
                                            platform) == "dense"
    # The default platform is where the backend computes (this machine: the CPU model).
    here = ops.dispatcher.backend_query("platform", "cpu")
    assert lp.choose_implementation((11, 11), 64, 1, 25, None, True) == lp.choose_implementation(
        (11, 11), 64, 1, 25, None, True, here)
    with ops.reference_mode():
        big = LogPolarConv2D(64, 11, rings=3, sectors=8, growth_rate=2.0)
        big.build((None, 16, 16, 64))
        assert big.resolved_implementation() == "dense"


# --------------------------------------------------------------------------- Keras contract

HARNESS_CASES = [
    dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0),
    dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0, implementation="pool", strides=2),
    dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0, pooling="max", activation="relu"),
    dict(filters=4, kernel_size=(5, 3), rings=2, sectors=4, growth_rate=2.0, groups=2, padding="valid",
         kernel_regularizer="l2"),
    dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0, implementation="pool",
         recompute=True),
]


@pytest.mark.parametrize("kwargs", HARNESS_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items() if a not in ("filters",)))
def test_layer_contract(kwargs):
    harness.run_layer_test(LogPolarConv2D, kwargs, (2, 8, 8, 4))


def test_works_in_compiled_fit_with_batchnorm():
    inputs = keras.Input((12, 12, 1))
    x = LogPolarConv2D(6, 9, rings=2, sectors=6, growth_rate=3.0, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=keras.backend.backend() == "jax")
    x = np.random.rand(8, 12, 12, 1).astype("float32")
    h = model.fit(x, np.arange(8) % 2, epochs=2, verbose=0)
    assert np.isfinite(h.history["loss"]).all()


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rings=0), "rings"),
        (dict(sectors=0), "sectors"),
        (dict(growth_rate=1.0), "growth_rate"),
        (dict(growth_rate=0.5), "growth_rate"),
        (dict(pooling="median"), "pooling"),
        (dict(padding="causal"), "padding"),
        (dict(implementation="fft"), "implementation"),
        (dict(pooling="max", implementation="dense"), "implementation"),
        (dict(implementation="max"), "implementation"),
        (dict(strides=0), "strides"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(data_format="NHWC"), "data_format"),
        (dict(groups=3), "groups"),
        (dict(filters=0), "filters"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LogPolarConv2D(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(rings=2.5), "rings"), (dict(kernel_size="9"), "kernel_size"), (dict(growth_rate="3"), "growth_rate"),
     (dict(center=1), "center"), (dict(filters=4.0), "filters"), (dict(recompute="yes"), "recompute")],
)
def test_bad_argument_types_raise_type_error(kwargs, match):
    args = dict(filters=4, kernel_size=5, rings=2, sectors=6, growth_rate=3.0)
    args.update(kwargs)
    with pytest.raises(TypeError, match=match):
        LogPolarConv2D(**args)


def test_bad_input_channels_for_groups():
    layer = LogPolarConv2D(4, 5, groups=2)
    with pytest.raises(ValueError, match="groups"):
        layer.build((None, 8, 8, 3))


def test_valid_padding_input_too_small():
    layer = LogPolarConv2D(4, 9, padding="valid")
    with pytest.raises(ValueError, match="kernel_size"):
        layer.compute_output_shape((None, 5, 12, 3))


def _lpsc(implementation):
    def make(recompute, data_format, policy):
        return LogPolarConv2D(8, 5, rings=2, sectors=6, growth_rate=3.0, data_format=data_format,
                              implementation=implementation, recompute=recompute, dtype=policy)

    return make


@pytest.mark.parametrize("jit_compile, data_format, size, policy, implementation",
                         harness.recompute_cases("implementation", ("pool", "dense")))
def test_recompute_trains_like_keeping_everything(jit_compile, data_format, size, policy,
                                                  implementation):
    """`recompute=True` gives the same outputs and `fit` updates as keeping the pooled maps
    (`harness.check_recompute_trains_alike`), on the pool and the dense path, in every pair of
    jit_compile × (format, size) × policy × implementation (on torch the compiled rows are
    channels_first, mixed bfloat16: `harness.recompute_cases`)."""
    harness.check_recompute_trains_alike(_lpsc(implementation), 8, data_format, size,
                                         jit_compile, policy)


def test_recompute_keeps_less_for_the_backward_pass():
    """Four pool-path layers in a row keep their pooled maps (13 times their input; not tiled
    at this size) for the backward pass; with `recompute=True` less. Measured: jax 14.1 →
    9.6 MB of XLA temp, torch 12.1 → 1.2 MB saved, tensorflow's allocator peak 17.3 → 11.1 MB
    in a fresh process (its allocator rounds chunks, so the ratio moves with what ran
    before in the process: hence the wider margin)."""
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((4, 40, 40, 8)).astype("float32"))
    kept = {flag: harness.kept_for_backward_bytes(
        harness.recompute_stack(_lpsc("pool"), flag, 8, depth=4, size=40), x)
        for flag in (False, True)}
    limit = {"jax": 0.8, "torch": 0.5, "tensorflow": 0.85}[keras.backend.backend()]
    assert kept[True] < limit * kept[False], kept
