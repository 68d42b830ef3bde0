"""The Pallas kernels of the jax backend (`keras_convx.ops._pallas`), run in Pallas' interpreter.

On a GPU they are opt-in fast paths; here `_jax.PALLAS_ON_CPU` sends the CPU through the same
kernels, so the layers' code path (padding, data formats, weight layout, the written
gradients) is checked against the NumPy oracles. Timings are in benchmarks/RESULTS_GPU.md.
"""

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("Pallas kernels exist on the jax backend only", allow_module_level=True)

from keras_convx import ops  # noqa: E402
from keras_convx.layers import E4Conv2D  # noqa: E402
from keras_convx.layers import LogPolarConv2D  # noqa: E402
from keras_convx.ops import _jax  # noqa: E402
from keras_convx.ops import _pallas  # noqa: E402
from keras_convx.ops import group as gops  # noqa: E402
from keras_convx.ops import log_polar as lp  # noqa: E402
from tests import harness  # noqa: E402
from tests.oracles import adjoint  # noqa: E402
from tests.oracles import group as group_oracle  # noqa: E402
from tests.oracles import log_polar as lp_oracle  # noqa: E402


@pytest.fixture
def pallas_interpreter(monkeypatch):
    """Route the jax fast paths through the Pallas kernels (interpreted) and count the calls."""
    calls = {"pool_mix": 0, "aggregate": 0}
    pool_mix, aggregate = _pallas.pool_mix_fn, _pallas.aggregate_fn

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(_jax, "PALLAS_ON_CPU", True)
    monkeypatch.setattr(_pallas, "pool_mix_fn", counted("pool_mix", pool_mix))
    monkeypatch.setattr(_pallas, "aggregate_fn", counted("aggregate", aggregate))
    return calls


def _random_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])


LPSC_CASES = [
    # (kwargs, channels_last input shape, whether the fused kernel applies)
    (dict(kernel_size=9, rings=2, sectors=6, growth_rate=3.0), (2, 7, 6, 3), True),
    (dict(kernel_size=(5, 7), rings=3, sectors=8, growth_rate=2.0, padding="valid"), (1, 8, 9, 2), True),
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=2.0, pooling="sum", center=False), (2, 6, 5, 17), True),
    # stride 2 and groups 2 each keep the kernel out (one case holds both)
    (dict(kernel_size=5, rings=2, sectors=6, growth_rate=3.0, strides=2, groups=2), (1, 8, 7, 4),
     False),
]


# Each configuration once, the data formats alternating (both formats reach the kernel and
# the fallback; interpreting Pallas on a CPU costs seconds per case).
@pytest.mark.parametrize("case, data_format", [
    (case, ("channels_last", "channels_first")[case % 2]) for case in range(len(LPSC_CASES))])
def test_fused_log_polar_matches_oracle(case, data_format, pallas_interpreter):
    kwargs, shape, fused = LPSC_CASES[case]
    layer = LogPolarConv2D(4, implementation="pool", data_format=data_format, **kwargs)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    layer.build(x.shape)
    _random_weights(layer)
    cfg = layer.get_config()
    keys = ("kernel_size", "rings", "sectors", "growth_rate", "initial_angle", "strides", "padding",
            "pooling", "groups", "data_format")
    geometry = {k: cfg[k] for k in keys}
    oracle = adjoint.with_vjp(lambda x_, w: lp_oracle.lpsc(x_, w, **geometry),
                              lambda x_, w, cot: adjoint.lpsc_vjp(x_, w, cot, **geometry))
    harness.assert_matches_oracle(layer, x, oracle, rtol=1e-5, atol=2e-5, grad_rtol=1e-3,
                                  grad_atol=1e-3)
    # The kernel runs exactly where it applies (stride 1, groups 1); elsewhere the XLA form.
    assert (pallas_interpreter["pool_mix"] > 0) == fused


def test_flipped_taps_are_the_point_reflection():
    pm = lp.pooling_matrix((5, 7), 3, 8, 2.0, 0.0, "mean", True)
    offsets = lp.region_offsets(pm)
    forward = _pallas.region_taps(offsets, (5, 7))
    flipped = _pallas.region_taps(offsets, (5, 7), flip=True)
    assert [r for r, _, _ in forward] == [r for r, _, _ in flipped]
    for (_, taps, w), (_, ftaps, fw) in zip(forward, flipped):
        assert w == fw and [(4 - a, 6 - b) for a, b in taps] == list(ftaps)
    # every window position once; the centre column of the pooling matrix adds the centre again
    all_taps = sorted(t for _, taps, _ in forward for t in taps)
    assert len(all_taps) == 5 * 7 + 1 and all_taps.count((2, 3)) == 2


@pytest.mark.parametrize("strides, m, a, k", [(1, 3, 5, 3), (2, 2, 4, 5)])
def test_pallas_aggregation_equals_patch_reference(strides, m, a, k):
    rng = np.random.default_rng(5)
    v = rng.standard_normal((2, 7, 8, m, a)).astype("float32")
    oh, ow = -(-7 // strides), -(-8 // strides)
    kernels = rng.standard_normal((2, oh, ow, k * k, a)).astype("float32")
    cot = rng.standard_normal((2, oh, ow, m, a)).astype("float32")
    fn = _pallas.aggregate_fn(k, (strides, strides), True)
    ref = np.asarray(gops.aggregate_patches(v, kernels, k, (strides, strides)))
    np.testing.assert_allclose(np.asarray(fn(v, kernels)), ref, rtol=1e-5, atol=1e-5)

    def loss(f):
        return lambda v_, k_: keras.ops.sum(f(v_, k_) * cot)

    got = harness.backend_gradients(loss(fn), [v, kernels])
    want = harness.backend_gradients(loss(lambda v_, k_: gops.aggregate_patches(v_, k_, k, (strides, strides))),
                                     [v, kernels])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group, kwargs, shape", [
    ("p4", dict(filters=4, kernel_size=3, reduction_ratio=1, slices=2), (2, 6, 6, 2)),
    ("p4m", dict(filters=2, kernel_size=5, reduction_ratio=2, slices=1, strides=2), (1, 8, 8, 2)),
])
def test_e4_through_pallas_matches_oracle(group, kwargs, shape, pallas_interpreter):
    n = {"p4": 4, "p4m": 8}[group]
    layer = E4Conv2D(group=group, **kwargs)
    b, h, w, fields = shape
    x = np.random.default_rng(1).standard_normal((b, h, w, fields * n)).astype("float32")
    layer.build(x.shape)
    _random_weights(layer)
    cfg = layer.get_config()
    harness.assert_matches_oracle(
        layer, x,
        lambda x_, w_: group_oracle.e4(x_, w_, group, cfg["kernel_size"], cfg["slices"], cfg["strides"],
                                       cfg["epsilon"]),
        rtol=1e-4, atol=1e-4, grad_rtol=2e-3, grad_atol=2e-3, max_fd_coords=24)
    assert pallas_interpreter["aggregate"] > 0


def test_pallas_is_opt_in_on_a_gpu(monkeypatch):
    monkeypatch.setattr(_jax, "_platform", lambda: "gpu")
    assert _jax._pallas_mode() is None  # default: XLA's fusions (measured as fast)
    with ops.reference_mode(False):
        ops.set_opt_in_fast_paths(True)
        try:
            assert _jax._pallas_mode() is False  # compiled (Triton), not interpreted
        finally:
            ops.set_opt_in_fast_paths(False)
    monkeypatch.setattr(_jax, "_platform", lambda: "cpu")
    ops.set_opt_in_fast_paths(True)
    try:
        assert _jax._pallas_mode() is None  # no GPU: never Triton
    finally:
        ops.set_opt_in_fast_paths(False)
