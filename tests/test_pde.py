"""DiffusionConv2D, HyperbolicConv2D, GraphDiffusion, GraphHyperbolic and their operators."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_convx.layers import CentredIdentity
from keras_convx.layers import DiffusionConv2D
from keras_convx.layers import GraphDiffusion
from keras_convx.layers import GraphHyperbolic
from keras_convx.layers import HyperbolicConv2D
from keras_convx.ops import pde as pops
from tests import harness
from tests.oracles import pde as oracle

RNG = np.random.default_rng(0)


def _rand(*shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype("float32")


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def _to_cf(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _set_kernel(layer, kernel):
    layer.kernel.assign(kernel.astype("float32"))


# ------------------------------------------------------------------------------ operators


def test_oracle_correlation_is_the_definition():
    e, kernel = _rand(2, 4, 5, 3).astype(np.float64), _rand(3, 3, 3, 2, seed=1).astype(np.float64)
    y = np.zeros((2, 4, 5, 2))
    for i in range(4):
        for j in range(5):
            for ti in range(3):
                for tj in range(3):
                    if 0 <= i + ti - 1 < 4 and 0 <= j + tj - 1 < 5:
                        y[:, i, j] += e[:, i + ti - 1, j + tj - 1] @ kernel[ti, tj]
    np.testing.assert_allclose(oracle.correlate(e, kernel), y, atol=1e-12)
    z = _rand(2, 4, 5, 2, seed=2)
    assert abs(np.sum(y * z) - np.sum(e * oracle.correlate_adjoint(z, kernel))) < 1e-9


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("k", [1, 3])
def test_grid_operator_matches_oracle_and_is_adjoint(k, data_format):
    f = _rand(2, 5, 6, 3)
    kernel = _rand(k, k, 3, 4, seed=1)
    edges = _rand(4, 5, 6, 4, seed=2)  # (2B, H, W, F)
    cf = data_format == "channels_first"
    fi, ei = (_to_cf(f), _to_cf(edges)) if cf else (f, edges)
    af = _np(pops.grid_operator(fi, kernel, data_format))
    ate = _np(pops.grid_operator_transpose(ei, kernel, data_format))
    if cf:
        af, ate = np.moveaxis(af, 1, -1), np.moveaxis(ate, 1, -1)
    ex, ey = oracle.operator(f.astype(np.float64), kernel.astype(np.float64))
    np.testing.assert_allclose(af[:2, :, :-1], ex, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(af[2:, :-1], ey, rtol=1e-5, atol=1e-5)
    # No feature on a non-edge (last column of x-edges, last row of y-edges).
    assert np.all(af[:2, :, -1] == 0) and np.all(af[2:, -1] == 0)
    real = [edges[:2, :, :-1].astype(np.float64), edges[2:, :-1].astype(np.float64)]
    np.testing.assert_allclose(ate, oracle.operator_adjoint(real, kernel.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)
    # ⟨A f, e⟩ = ⟨f, Aᵀ e⟩ to float32 round-off.
    lhs, rhs = np.sum(af * edges), np.sum(f * ate)
    assert abs(lhs - rhs) <= 1e-5 * np.sqrt(np.sum(af**2) * np.sum(edges**2))


def test_grid_gradient_adjoint_and_neumann():
    f, g = _rand(1, 4, 7, 2), _rand(1, 4, 7, 2, seed=3)
    gx, gy = (_np(t) for t in pops.grid_gradient(f))
    e = [_rand(1, 4, 7, 2, seed=4), _rand(1, 4, 7, 2, seed=5)]
    div = _np(pops.grid_divergence(*e))
    lhs = np.sum(gx[:, :, :-1] * e[0][:, :, :-1]) + np.sum(gy[:, :-1] * e[1][:, :-1])
    assert abs(lhs - np.sum(f * div)) <= 1e-5 * np.sqrt(np.sum(f**2) * sum(np.sum(t**2) for t in e))
    # Neumann: constants are in the kernel of G, and Gᵀ of anything sums to zero (no flux out).
    zx, zy = pops.grid_gradient(np.full((1, 4, 7, 2), 3.0, "float32"))
    assert np.all(_np(zx) == 0) and np.all(_np(zy) == 0)
    assert abs(np.sum(_np(pops.grid_divergence(g, g)))) < 1e-4


def test_graph_operators_match_oracle_and_are_adjoint():
    n, c = 7, 3
    edges = np.array([[0, 1, 2, 3, 4, 5, 6, 2], [1, 2, 3, 4, 5, 6, 0, 5]])
    w = np.abs(_rand(8, seed=6)) + 0.1
    x, g = _rand(n, c), _rand(8, c, seed=7)
    gx = _np(pops.graph_gradient(x[None], edges[None], w[None]))[0]
    div = _np(pops.graph_divergence(g[None], edges[None], w[None], n))[0]
    np.testing.assert_allclose(gx, oracle.graph_gradient(x, edges, w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(div, oracle.graph_divergence(g, edges, w, n), rtol=1e-5, atol=1e-6)
    assert abs(np.sum(gx * g) - np.sum(x * div)) <= 1e-5 * np.linalg.norm(gx) * np.linalg.norm(g)
    bound = float(_np(pops.graph_gradient_norm_bound(edges[None], w[None], n))[0])
    np.testing.assert_allclose(bound, oracle.graph_gradient_bound(edges, w, n), rtol=1e-5)
    lap = np.zeros((n, n))
    for e in range(edges.shape[1]):
        v = np.zeros(n)
        v[edges[0, e]], v[edges[1, e]] = w[e], -w[e]
        lap += np.outer(v, v)
    assert np.linalg.eigvalsh(lap).max() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_kernel_norm_bound_is_an_upper_bound(k):
    for seed in range(5):
        kernel = _rand(k, k, 2, 3, seed=seed, scale=3.0)
        a = oracle.dense_operator((4, 5, 2), kernel.astype(np.float64))
        lam = np.linalg.eigvalsh(a.T @ a).max()
        bound = float(_np(pops.kernel_norm_bound(kernel)))
        np.testing.assert_allclose(bound, oracle.kernel_norm_bound(kernel.astype(np.float64)),
                                   rtol=1e-5)
        assert lam <= 8 * bound**2 * (1 + 1e-5)


# ------------------------------------------------------------------------------ oracles

GRID_CASES = [
    (DiffusionConv2D, dict(kernel_size=1, step_size=0.3), (2, 5, 6, 3)),
    (DiffusionConv2D, dict(kernel_size=3, step_size=0.2, activation="relu", filters=4),
     (1, 5, 4, 2)),
    (DiffusionConv2D, dict(kernel_size=3, step_size=5.0, activation="linear", stable=True),
     (1, 4, 5, 2)),
    (DiffusionConv2D, dict(kernel_size=3, step_size=0.1, activation="sigmoid"), (1, 4, 4, 2)),
    (DiffusionConv2D, dict(kernel_size=1, step_size=0.1, activation="sigmoid", filters=3),
     (1, 4, 5, 2)),
    (HyperbolicConv2D, dict(kernel_size=3, step_size=0.3), (2, 4, 5, 2)),
    (HyperbolicConv2D, dict(kernel_size=1, step_size=2.0, stable=True, filters=3), (1, 5, 5, 2)),
    (HyperbolicConv2D, dict(kernel_size=3, step_size=0.4, diffusion_blend=True), (1, 4, 4, 2)),
]


def _grid_oracle(layer):
    cfg = layer.get_config()
    act = cfg["activation"]
    h, stable = cfg["step_size"], cfg["stable"]

    def fn(x, w):
        if isinstance(layer, DiffusionConv2D):
            return oracle.diffusion(x, w["kernel"], h, act, stable)
        return oracle.hyperbolic(x, x, w["kernel"], h, act, stable, w.get("blend_logit"))

    return fn


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("cls, kwargs, shape", GRID_CASES)
def test_grid_layers_match_oracle(cls, kwargs, shape, data_format):
    layer = cls(data_format=data_format, **kwargs)
    x = _rand(*shape)
    layer.build(shape if data_format == "channels_last" else _to_cf(x).shape)
    scale = 3.0 if kwargs.get("stable") else 0.5  # stable: a large K, so the cap binds
    layer.kernel.assign(layer.kernel + _rand(*layer.kernel.shape, seed=1, scale=scale))
    if kwargs.get("diffusion_blend"):
        layer.blend_logit.assign(0.7)
    fn = _grid_oracle(layer)
    if kwargs.get("stable"):
        assert float(_np(layer.effective_step_size())) < kwargs["step_size"]
    if data_format == "channels_first":
        x = _to_cf(x)
        base = fn
        fn = lambda a, w: np.moveaxis(base(np.moveaxis(a, 1, -1), w), -1, 1)  # noqa: E731
    harness.assert_matches_oracle(layer, x, fn, rtol=1e-4, atol=1e-4, grad_rtol=2e-3,
                                  grad_atol=2e-3)


def _pair_gradients(layer, inputs, cotangent):
    """Gradients of sum(layer(inputs) * cot) w.r.t. every input and trainable weight."""
    trainable = list(layer.trainable_variables)
    cot = keras.ops.convert_to_tensor(cotangent)
    n = len(inputs)

    def loss(*args):
        y, _ = layer.stateless_call(list(args[n:]), [], list(args[:n]))
        return keras.ops.sum(y * cot)

    return harness.backend_gradients(loss, [*inputs, *[harness.to_numpy(v) for v in trainable]])


def test_hyperbolic_state_pair_matches_oracle():
    layer = HyperbolicConv2D(kernel_size=3, step_size=0.3, activation="tanh")
    f, f_prev = _rand(2, 4, 5, 2), _rand(2, 4, 5, 2, seed=9)
    layer.build([f.shape, f.shape])
    _set_kernel(layer, _np(layer.kernel) + _rand(3, 3, 2, 2, seed=1, scale=0.5))
    kernel = _np(layer.kernel)

    def fn(a, b, kk):
        return oracle.hyperbolic(a, b, kk, 0.3, "tanh")

    y = _np(layer([f, f_prev]))
    np.testing.assert_allclose(y, fn(f.astype(np.float64), f_prev.astype(np.float64), kernel),
                               rtol=1e-4, atol=1e-4)
    cot = _rand(*y.shape, seed=11).astype(np.float64)
    grads = _pair_gradients(layer, [f, f_prev], cot.astype("float32"))
    arrays = [f.astype(np.float64), f_prev.astype(np.float64), kernel]
    for i, g in enumerate(grads):
        fd = harness.finite_difference_gradient(fn, arrays, i, cot, max_coords=30)
        known = ~np.isnan(fd)
        np.testing.assert_allclose(g[known], fd[known], rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------ theorems


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_diffusion_norm_never_grows_over_200_layers(activation):
    shape = (4, 4, 2)
    f = _rand(1, *shape, seed=3, scale=2.0)
    norms = [np.linalg.norm(f)]
    layer = DiffusionConv2D(kernel_size=3, activation=activation)
    layer.build((1, *shape))
    for depth in range(200):
        kernel = _rand(3, 3, 2, 2, seed=100 + depth, scale=0.6).astype(np.float64)
        a = oracle.dense_operator(shape, kernel)
        layer.step_size = 1.9 / np.linalg.eigvalsh(a.T @ a).max()
        _set_kernel(layer, kernel)
        f = harness.to_numpy(layer(f))
        norms.append(np.linalg.norm(f))
    norms = np.array(norms)
    assert np.all(norms[1:] <= norms[:-1] * (1 + 2e-6)), np.max(norms[1:] / norms[:-1])
    assert norms[-1] < norms[0]


@pytest.mark.parametrize("cls", [DiffusionConv2D, HyperbolicConv2D])
def test_stable_cap_holds_for_large_random_kernels(cls):
    shape = (5, 4, 3)
    layer = cls(kernel_size=3, step_size=10.0, stable=True, activation="relu")
    layer.build((1, *shape))
    for seed in range(4):
        kernel = _rand(3, 3, 3, 3, seed=seed, scale=30.0)
        _set_kernel(layer, kernel)
        a = oracle.dense_operator(shape, kernel.astype(np.float64))
        lam = np.linalg.eigvalsh(a.T @ a).max()
        h = float(_np(layer.effective_step_size()))
        if cls is DiffusionConv2D:
            assert h <= 2.0 / lam * (1 + 1e-6)
        else:
            assert h * h * lam < 4.0
    if cls is DiffusionConv2D:
        f = _rand(2, *shape, scale=5.0)
        for _ in range(30):
            g = harness.to_numpy(layer(f))
            assert np.linalg.norm(g) <= np.linalg.norm(f) * (1 + 2e-6)
            f = g


@settings(max_examples=20, deadline=None, derandomize=True)
@given(height=st.integers(2, 6), width=st.integers(2, 6), channels=st.integers(1, 3),
       log_scale=st.floats(-2.0, 2.0), step_size=st.floats(0.01, 100.0),
       activation=st.sampled_from(["relu", "tanh", "linear"]), seed=st.integers(0, 2**16))
def test_stable_diffusion_step_is_non_expansive_for_drawn_kernels_and_inputs(
        height, width, channels, log_scale, step_size, activation, seed):
    # The theorem for any kernel, step size and image: with stable=True, f − h·Aᵀσ(Af) is a
    # gradient step on a convex function whose gradient is λ-Lipschitz with h ≤ 2/λ, so it
    # never moves two inputs apart (and 0 is its fixed point: it never grows the norm).
    layer = DiffusionConv2D(kernel_size=3, step_size=step_size, stable=True, activation=activation)
    layer.build((2, height, width, channels))
    _set_kernel(layer, _rand(3, 3, channels, channels, seed=seed, scale=10.0**log_scale))
    f1 = _rand(2, height, width, channels, seed=seed + 1, scale=3.0)
    f2 = f1 + _rand(2, height, width, channels, seed=seed + 2, scale=0.1)
    g1, g2 = _np(layer(f1)), _np(layer(f2))
    # float32 rounding only: the capped step keeps h·λ ≤ 2, whatever step_size was asked for
    assert np.linalg.norm(g1 - g2) <= np.linalg.norm(f1 - f2) * (1 + 1e-5) + 1e-6
    assert np.linalg.norm(g1) <= np.linalg.norm(f1) * (1 + 1e-5) + 1e-6


def test_leapfrog_conserves_energy_over_300_steps():
    shape = (5, 5, 2)
    kernel = _rand(3, 3, 2, 2, seed=5, scale=0.5).astype(np.float64)
    a = oracle.dense_operator(shape, kernel)
    ata = a.T @ a
    lam = np.linalg.eigvalsh(ata).max()
    h = 1.0 / np.sqrt(lam)  # h²λ = 1 < 4
    layer = HyperbolicConv2D(kernel_size=3, step_size=h, activation="linear", return_state=True)
    f0 = _rand(1, *shape, seed=2)
    state = layer(f0)
    _set_kernel(layer, kernel)
    state = layer(f0)
    energies = []
    for _ in range(300):
        nxt, cur = (_np(s).reshape(-1) for s in state)
        energies.append(np.sum(((nxt - cur) / h) ** 2) + nxt @ ata @ cur)
        state = layer(state)
    energies = np.array(energies)
    assert energies[0] > 0
    assert np.max(np.abs(energies - energies[0])) / energies[0] < 1e-4
    # ...while the fields themselves move a lot (a real oscillation, not a frozen state).
    assert np.linalg.norm(_np(state[0]) - f0) > 0.5 * np.linalg.norm(f0)


def test_grid_layer_equals_graph_layer_on_the_grid_graph():
    h, w, c = 4, 5, 3
    x = _rand(1, h, w, c)
    kernel = _rand(1, 1, c, c, seed=2)
    grid = DiffusionConv2D(kernel_size=1, step_size=0.2)
    grid.build(x.shape)
    _set_kernel(grid, kernel)
    graph = GraphDiffusion(step_size=0.2)
    edges = oracle.grid_edges(h, w)
    graph.build([(h * w, c), edges.shape])
    _set_kernel(graph, kernel[0, 0])
    y_grid = _np(grid(x)).reshape(h * w, c)
    y_graph = _np(graph([x.reshape(h * w, c), edges]))
    np.testing.assert_allclose(y_graph, y_grid, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ graphs

GRAPH_EDGES = np.array([[0, 1, 2, 3, 4, 5, 1, 0], [1, 2, 3, 4, 5, 0, 4, 3]])


@pytest.mark.parametrize("cls, kwargs", [
    (GraphDiffusion, dict(step_size=0.3)),
    (GraphDiffusion, dict(step_size=4.0, stable=True, activation="relu", filters=4)),
    (GraphHyperbolic, dict(step_size=0.3, filters=2)),
    (GraphHyperbolic, dict(step_size=0.5, diffusion_blend=True, stable=True)),
])
def test_graph_layers_match_oracle(cls, kwargs):
    b, n, c = 2, 6, 3
    x = _rand(b, n, c)
    edges = np.stack([GRAPH_EDGES, GRAPH_EDGES[::-1]]).astype("int32")
    weights = np.abs(_rand(b, 8, seed=4)) + 0.2
    layer = cls(**kwargs)
    layer.build([x.shape, edges.shape, weights.shape])
    _set_kernel(layer, _np(layer.kernel) + _rand(*layer.kernel.shape, seed=1, scale=0.7))
    blend = 0.4 if kwargs.get("diffusion_blend") else None
    if blend is not None:
        layer.blend_logit.assign(blend)
    act, h, stable = layer.get_config()["activation"], kwargs["step_size"], kwargs.get("stable",
                                                                                       False)

    def fn(x_, kk):
        out = []
        for i in range(b):
            bound = oracle.graph_gradient_bound(edges[i], weights[i], n)
            flux = oracle.graph_flux(x_[i], edges[i], weights[i], kk, act)
            theorem = "diffusion" if cls is GraphDiffusion else "wave"
            hi = oracle.step(h, kk, stable, theorem, bound)
            if blend is not None and stable:
                hi = min(hi, oracle.step(h, kk, True, "diffusion", bound))
            out.append(x_[i] - hi * flux if cls is GraphDiffusion
                       else oracle.leapfrog(x_[i], x_[i], flux, hi, blend))
        return np.stack(out)

    kernel = _np(layer.kernel)
    y = _np(layer([x, edges, weights]))
    np.testing.assert_allclose(y, fn(x.astype(np.float64), kernel), rtol=1e-4, atol=1e-4)
    cot = _rand(*y.shape, seed=12).astype(np.float64)
    trainable = list(layer.trainable_variables)

    def loss(x_, *tv):
        out, _ = layer.stateless_call(list(tv), [], [x_, edges, weights])
        return keras.ops.sum(out * keras.ops.convert_to_tensor(cot.astype("float32")))

    grads = harness.backend_gradients(loss, [x, *[harness.to_numpy(v) for v in trainable]])
    arrays = [x.astype(np.float64), kernel]
    for i in range(2):
        fd = harness.finite_difference_gradient(fn, arrays, i, cot, max_coords=30)
        known = ~np.isnan(fd)
        np.testing.assert_allclose(grads[i][known], fd[known], rtol=2e-3, atol=2e-3)


def test_graph_stack_in_a_functional_model_fits_and_reloads():
    n, c, e = 6, 3, GRAPH_EDGES.shape[1]
    xi = keras.Input((n, c))
    ei = keras.Input((2, e), dtype="int32")
    wi = keras.Input((e,))
    state = GraphHyperbolic(return_state=True)([xi, ei, wi])
    state = GraphHyperbolic(return_state=True, stable=True)([state, ei, wi])
    y = GraphHyperbolic()([state, ei, wi])
    y = GraphDiffusion(stable=True)([y, ei, wi])
    model = keras.Model([xi, ei, wi], y)
    data = [_rand(4, n, c), np.repeat(GRAPH_EDGES[None], 4, 0).astype("int32"),
            np.ones((4, e), "float32")]
    model.compile(optimizer="sgd", loss="mse")
    model.fit(data, _rand(4, n, c, seed=1), epochs=1, verbose=0)
    harness.check_save_load(model, data)


# ------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("cls, kwargs, params", [
    (DiffusionConv2D, dict(kernel_size=3, step_size=0.2, stable=True), 3 * 3 * 3 * 3),
    (DiffusionConv2D, dict(filters=5, activation="relu"), 3 * 5),
    (HyperbolicConv2D, dict(kernel_size=3, filters=2), 3 * 3 * 3 * 2),
    (HyperbolicConv2D, dict(diffusion_blend=True, stable=True), 3 * 3 + 1),
])
def test_layer_contract(cls, kwargs, params):
    harness.run_layer_test(cls, kwargs, (2, 6, 5, 3), expected_num_params=params,
                           expected_output_shape=(2, 6, 5, 3))


def test_hyperbolic_stack_in_a_functional_model_reloads():
    x = keras.Input((6, 6, 2))
    state = HyperbolicConv2D(kernel_size=3, return_state=True)(x)
    for _ in range(2):
        state = HyperbolicConv2D(kernel_size=3, return_state=True, diffusion_blend=True)(state)
    y = HyperbolicConv2D(kernel_size=3)(state)
    model = keras.Model(x, y)
    for layer in model.layers[1:]:
        _set_kernel(layer, _np(layer.kernel) + _rand(*layer.kernel.shape, seed=3, scale=0.3))
    data = _rand(3, 6, 6, 2)
    expected = model.predict(data, verbose=0)
    # The same chain by hand, each layer fed the previous state pair.
    state = data
    for layer in model.layers[1:]:
        state = layer(state)
    np.testing.assert_allclose(_np(state), expected, rtol=1e-5, atol=1e-5)
    harness.check_save_load(model, data)


def test_centred_identity_starts_as_the_identity():
    x = _rand(2, 5, 5, 3)
    for k in (1, 3):
        y = _np(pops.apply_kernel(x, CentredIdentity()((k, k, 3, 3))))
        np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_array_equal(_np(CentredIdentity(2.0)((2, 3))), 2 * np.eye(2, 3))


# ------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(step_size=0.0), ValueError, r"step_size to be a finite number > 0"),
    (dict(step_size=-1.0), ValueError, r"step_size to be a finite number > 0"),
    (dict(step_size="0.1"), TypeError, "step_size"),
    (dict(step_size=float("nan")), ValueError, "step_size"),
    (dict(kernel_size=2), ValueError, "kernel_size"),
    (dict(filters=0), ValueError, "filters"),
    (dict(stable="yes"), TypeError, "stable"),
    (dict(stable=True, activation="gelu"), ValueError, "monotonically"),
    (dict(stable=True, activation="sigmoid"), ValueError, "sign-preserving"),
    (dict(stable=True, activation=lambda t: 2.0 * t), ValueError, "amplifies"),
    (dict(data_format="nhwc"), ValueError, "data_format"),
])
@pytest.mark.parametrize("cls", [DiffusionConv2D, HyperbolicConv2D])
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_non_monotone_activation_is_fine_without_stable():
    layer = DiffusionConv2D(activation="gelu")
    assert layer(_rand(1, 4, 4, 2)).shape == (1, 4, 4, 2)


def test_mismatched_state_shapes_raise():
    layer = HyperbolicConv2D()
    with pytest.raises(ValueError, match="matching shapes"):
        layer([_rand(1, 4, 4, 2), _rand(1, 4, 5, 2)])
    with pytest.raises(ValueError, match="matching shapes"):
        HyperbolicConv2D()([keras.Input((4, 4, 2)), keras.Input((4, 4, 3))])
    with pytest.raises(ValueError, match="state pair"):
        HyperbolicConv2D()([_rand(1, 4, 4, 2)] * 3)
    with pytest.raises(ValueError, match="matching shapes"):
        GraphHyperbolic()([[_rand(5, 2), _rand(4, 2)], GRAPH_EDGES[:, :3]])


def test_bad_graph_inputs_raise():
    x = _rand(6, 3)
    with pytest.raises(ValueError, match=r"\[x, edge_index"):
        GraphDiffusion()(x)
    with pytest.raises(ValueError, match="edge_index must be"):
        GraphDiffusion()([x, np.zeros((3, 4), "int32")])
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        GraphDiffusion()([x, GRAPH_EDGES, np.ones((3,), "float32")])
    with pytest.raises(ValueError, match="not a state pair"):
        GraphDiffusion()([[x, x], GRAPH_EDGES])


# ------------------------------------------------------------------ graphs never mix samples


def _two_graphs():
    x = _rand(2, 6, 3)
    edges = np.stack([GRAPH_EDGES, GRAPH_EDGES[::-1]]).astype("int32")
    return x, edges


@pytest.mark.parametrize("cls", [GraphDiffusion, GraphHyperbolic])
@pytest.mark.parametrize("bad_index", [-1, 6, 9])
def test_graph_layers_refuse_out_of_range_indices_eagerly(cls, bad_index):
    x, edges = _two_graphs()
    edges[0, 1, 2] = bad_index
    with pytest.raises(ValueError, match=r"edge_index must hold node numbers in \[0, 6\).*\(0, 2\)"):
        cls()([x, edges])


@pytest.mark.parametrize("cls", [GraphDiffusion, GraphHyperbolic])
def test_graph_layers_refuse_float_indices(cls):
    x, edges = _two_graphs()
    with pytest.raises(TypeError, match="integer edge_index"):
        cls()([x, edges.astype("float32") + 0.5])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_traced_out_of_range_edges_never_read_another_graph(jit_compile):
    """Inside a traced/compiled step the values are unknown: the op masks the bad edges.
    Changing only graph 1's features must leave graph 0's output unchanged, and graph 0 must
    equal its output without the bad edge (negative and too-large indices). Both graph layers
    are outputs of one model: one compilation (torch.compile took 84 and 61 s for the two
    one-layer models, cold cache, 2 cores; 95 s for this one)."""
    x, edges = _two_graphs()
    bad = edges.copy()
    bad[0, 1, 2], bad[0, 0, 5] = 8, -3  # would be graph 1's node 2 / graph -1's node 3
    xi, ei = keras.Input((6, 3)), keras.Input((2, edges.shape[-1]), dtype="int32")
    pdes = [GraphDiffusion(), GraphHyperbolic()]
    model = keras.Model([xi, ei], [layer([xi, ei]) for layer in pdes])
    model.compile(loss=["mse", "mse"], jit_compile=jit_compile)
    if not jit_compile and keras.backend.backend() != "tensorflow":
        # jax and torch run an uncompiled step eagerly: the values are known, so refused
        with pytest.raises(ValueError, match="edge_index must hold node numbers"):
            model.predict([x, bad], verbose=0)
        return
    ys = model.predict([x, bad], verbose=0)
    x_moved = x.copy()
    x_moved[1] += 5.0
    moved = model.predict([x_moved, bad], verbose=0)
    # graph 0 with the two bad edges dropped (weight 0) gives the same output
    weights = np.ones(edges.shape[::2], "float32")
    weights[0, [2, 5]] = 0.0
    clean = edges.copy()
    clean[0, 1, 2], clean[0, 0, 5] = 0, 0
    for layer, y, y_moved in zip(pdes, ys, moved):
        name = type(layer).__name__
        np.testing.assert_array_equal(y_moved[0], y[0], err_msg=name)
        expected = harness.to_numpy(layer([x, clean, weights]))
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6, err_msg=name)
    # the compiled training step runs with the bad edges too, its loss finite
    assert np.all(np.isfinite(model.train_on_batch([x, bad], [np.zeros_like(y) for y in ys])))


@pytest.mark.parametrize("cls", [GraphDiffusion, GraphHyperbolic])
def test_graph_layers_refuse_other_channel_counts(cls):
    x, edges = _two_graphs()
    layer = cls()
    layer([x, edges])
    with pytest.raises(ValueError, match=r"built for node features x with 3 channels"):
        layer([_rand(2, 6, 5), edges])
