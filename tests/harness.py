"""Test harness for keras_convx layers, used by every layer family's tests.

- `run_layer_test(cls, init_kwargs, input_shape, ...)`: the contract every layer meets (config
  round trip, build, eager and symbolic calls, `compute_output_shape`, one `fit` step, `.keras`
  save/load identity, both data formats, mixed precision).
- `assert_matches_oracle(layer, inputs, oracle, ...)`: forward outputs AND input/weight
  gradients of a layer, on the current backend, against a NumPy oracle from tests/oracles/.
  Oracle gradients come from an analytic NumPy function when the oracle offers one, otherwise
  from central finite differences of the float64 oracle.
- `backend_gradients(fn, args)`: gradients through the current backend's own autodiff.
"""

import contextlib
import inspect
import json
import os
import tempfile

import keras
import numpy as np
import pytest

from tests import layer_cases

BACKEND = keras.backend.backend()
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
# For tests of float64 precision: only TensorFlow computes a float64 layer in float64 (jax has
# x64 off; Keras' torch matmul computes float64 in float32).
FLOAT64_PRECISION = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="float64 computed in float64: TensorFlow (jax has x64 off, "
                                    "Keras' torch matmul computes float64 in float32)")


class HarnessError(AssertionError):
    """Raised by the harness when a layer breaks the contract; the message says which part."""


def _fail(check, message):
    raise HarnessError(f"[{check}] {message}")


@contextlib.contextmanager
def _check(name):
    """Any exception inside becomes a HarnessError naming the check that broke."""
    try:
        yield
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the check's name
        raise HarnessError(f"[{name}] {type(e).__name__}: {e}") from e


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _random_inputs(shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype)


def _to_channels_first(shape):
    return (shape[0], shape[-1], *shape[1:-1])


def _normalise_shape(shape):
    return tuple(None if d is None else int(d) for d in shape)


def _accepts(cls, name):
    return name in inspect.signature(cls.__init__).parameters


def _config_json(config):
    return json.dumps(keras.saving.serialize_keras_object(config), sort_keys=True, default=str)


def check_config_round_trip(cls, init_kwargs):
    layer = cls(**init_kwargs)
    config = layer.get_config()
    missing = [k for k in init_kwargs if k not in config]
    if missing:
        _fail("config", f"get_config() of {cls.__name__} lacks constructor arguments {missing}")
    clone = cls.from_config(config)
    if _config_json(clone.get_config()) != _config_json(config):
        _fail("config", f"{cls.__name__}.from_config(get_config()) changes the config")
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(serialized)
    if type(revived) is not cls:
        _fail("config", f"{cls.__name__} does not deserialize to itself (is it registered?)")
    return config


def _check_output_shape(check, layer, output, input_shape):
    expected = _normalise_shape(layer.compute_output_shape(input_shape))
    got = _normalise_shape(output.shape)
    if got != expected:
        _fail(check, f"output shape {got} != compute_output_shape {expected}")


def _fit_one_step(model, x, check="fit", promised_zeros=None):
    y = model.predict(x, verbose=0)
    target = np.random.default_rng(1).standard_normal(y.shape).astype("float32")
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    history = model.fit(x, target, batch_size=x.shape[0], epochs=1, verbose=0)
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        _fail(check, f"one fit step gave a non-finite loss {loss}")
    after = [to_numpy(w) for w in model.trainable_weights]
    if before and all(np.array_equal(b, a) for b, a in zip(before, after)):
        _fail(check, "one fit step changed no trainable weight (no gradient reaches them?)")
    check_every_weight_gets_a_gradient(model, x, target, check, promised_zeros)


def model_gradients(model, x, target):
    """{variable path: dL/dw} for L = mean((model(x) − target)²) in training mode, through
    the backend's own autodiff (NumPy out)."""
    trainable = list(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]
    target = keras.ops.convert_to_tensor(np.asarray(target, "float32"))

    def loss(*tv):
        y, _ = model.stateless_call(list(tv), non_trainable, x, training=True)
        return keras.ops.mean(keras.ops.square(keras.ops.cast(y, "float32") - target))

    grads = backend_gradients(loss, [to_numpy(v) for v in trainable], jit=False)
    return {v.path: g for v, g in zip(trainable, grads)}


def check_every_weight_gets_a_gradient(model, x, target, check="fit", promised_zeros=None):
    """Every trainable weight must get a finite gradient that is not identically zero (one
    changed weight is not enough: a layer can silently cut the gradient of another).

    `promised_zeros(variable)` → a 0/1 array or None: where the layer promises an exactly
    zero gradient (0 entries, e.g. pruned connections), checked too."""
    if not model.trainable_variables:
        return
    grads = model_gradients(model, x, target)
    variables = {v.path: v for v in model.trainable_variables}
    for path, g in grads.items():
        if not np.all(np.isfinite(g)):
            _fail(check, f"the gradient of {path} is not finite")
        if not np.any(g):
            _fail(check, f"the gradient of {path} is identically zero (it never trains)")
        mask = promised_zeros(variables[path]) if promised_zeros else None
        if mask is not None:
            leaks = np.broadcast_to(np.asarray(mask), g.shape) == 0
            if np.any(g[leaks] != 0):
                _fail(check, f"{path}: non-zero gradient where the layer promises an exact zero")


def check_save_load(model, x, check="saving"):
    """Save `model` as .keras, reload it: same outputs on `x`, same weights. Returns it."""
    expected = model.predict(x, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    got = loaded.predict(x, verbose=0)
    if not np.allclose(got, expected, rtol=1e-6, atol=1e-6):
        err = np.max(np.abs(got - expected))
        _fail(check, f"outputs differ after .keras save/load (max abs diff {err:.3g})")
    names = lambda m: sorted(w.path for w in m.weights)  # noqa: E731
    if len(model.weights) != len(loaded.weights):
        _fail(check, f"weights differ after save/load: {names(model)} vs {names(loaded)}")
    for w_a, w_b in zip(model.weights, loaded.weights):
        if not np.array_equal(to_numpy(w_a), to_numpy(w_b)):
            _fail(check, f"weight {w_a.path} differs after save/load")
    return loaded


def _check_data_formats(cls, init_kwargs, input_shape, x, reference_layer, reference_y, atol):
    """Same weights, channels_first input: the output must be the transposed output."""
    layer = cls(**dict(init_kwargs, data_format="channels_first"))
    cf_shape = _to_channels_first(input_shape)
    x_cf = np.moveaxis(x, -1, 1)
    y_cf = layer(x_cf)
    _check_output_shape("data_format", layer, y_cf, cf_shape)
    if [w.shape for w in layer.weights] != [w.shape for w in reference_layer.weights]:
        _fail("data_format", "weight shapes depend on data_format")
    layer.set_weights(reference_layer.get_weights())
    y_cf = to_numpy(layer(x_cf))
    expected = np.moveaxis(to_numpy(reference_y), -1, 1)
    if not np.allclose(y_cf, expected, atol=atol, rtol=atol):
        err = np.max(np.abs(y_cf - expected))
        _fail("data_format", f"channels_first output != transposed channels_last (max {err:.3g})")
    symbolic = layer(keras.Input(shape=cf_shape[1:]))
    _check_output_shape("data_format", layer, symbolic, (None, *cf_shape[1:]))


MIXED_TOLERANCE = {"mixed_float16": 3e-3, "mixed_bfloat16": 3e-2}  # ‖y − y32‖ / ‖y32‖


def _check_mixed_precision(cls, init_kwargs, x, reference_layer, reference_y):
    """Per policy: compute dtype out, float32 variables, finite outputs, the same weights'
    float32 output within the policy's relative tolerance (fp16 ~1e-3, bf16 ~1e-2: a
    wrong cast or a float16 overflow in the middle shows), and one finite fit step."""
    expected = to_numpy(keras.ops.cast(reference_y, "float32")).astype(np.float64)
    for policy in MIXED_POLICIES:
        layer = cls(**dict(init_kwargs, dtype=policy))
        y = layer(x)
        compute = keras.mixed_precision.DTypePolicy(policy).compute_dtype
        if keras.backend.standardize_dtype(y.dtype) != compute:
            _fail("mixed_precision", f"{policy}: output dtype {y.dtype} != {compute}")
        for w in layer.trainable_weights:
            if keras.backend.standardize_dtype(w.dtype) != "float32":
                _fail("mixed_precision", f"{policy}: variable {w.path} is {w.dtype}, not float32")
        got = to_numpy(keras.ops.cast(y, "float32")).astype(np.float64)
        if not np.all(np.isfinite(got)):
            _fail("mixed_precision", f"{policy}: non-finite outputs")
        layer.set_weights(reference_layer.get_weights())
        got = to_numpy(keras.ops.cast(layer(x), "float32")).astype(np.float64)
        error = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12)
        if error > MIXED_TOLERANCE[policy]:
            _fail("mixed_precision", f"{policy}: relative error {error:.2g} against float32 "
                                     f"(allowed {MIXED_TOLERANCE[policy]:g})")
        inputs = keras.Input(shape=x.shape[1:])
        model = keras.Model(inputs, cls(**dict(init_kwargs, dtype=policy))(inputs))
        # uncompiled: the step's numerics are what is checked, not XLA (saves a compilation
        # per layer and policy)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
        loss = model.train_on_batch(x, np.zeros(model.output.shape[1:], "float32")[None]
                                    .repeat(len(x), 0))
        if not np.isfinite(loss):
            _fail("mixed_precision", f"{policy}: one fit step gave a non-finite loss {loss}")


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    *,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    expected_num_params=None,
    run_fit=True,
    run_saving=True,
    run_data_formats=True,
    run_mixed_precision=True,
    data_format_atol=1e-5,
    prepare=None,
    promised_zeros=None,
):
    """Check that `layer_cls(**init_kwargs)` meets keras_convx's layer contract.

    `input_shape` includes the batch and is channels_last when the layer has a `data_format`
    (the harness derives the channels_first case itself). Raises `HarnessError` (an
    AssertionError) naming the failed check.

    `prepare(layer)` is applied to the built layer of the fit/saving model (e.g. to prune
    some connections); `promised_zeros(variable)` gives where its gradient must be exactly 0
    (see `check_every_weight_gets_a_gradient`).
    """
    input_shape = _normalise_shape(input_shape)
    with _check("config"):
        check_config_round_trip(layer_cls, init_kwargs)

    with _check("build"):
        layer = layer_cls(**init_kwargs)
        layer.build(input_shape)
        if not layer.built:
            _fail("build", "layer.built is False after build()")
        counts = {
            "trainable weights": (expected_num_trainable_weights, len(layer.trainable_weights)),
            "non-trainable weights": (
                expected_num_non_trainable_weights,
                len(layer.non_trainable_weights),
            ),
            "parameters": (expected_num_params, layer.count_params()),
        }
        for what, (expected, got) in counts.items():
            if expected is not None and expected != got:
                _fail("build", f"expected {expected} {what}, got {got}")

    x = _random_inputs(input_shape)
    with _check("eager"):
        y = layer(x)
        _check_output_shape("eager", layer, y, input_shape)
        if expected_output_shape is not None and _normalise_shape(y.shape) != _normalise_shape(
            expected_output_shape
        ):
            _fail("eager", f"output shape {tuple(y.shape)} != expected {expected_output_shape}")

    with _check("symbolic"):
        inputs = keras.Input(shape=input_shape[1:])
        sym_layer = layer_cls(**init_kwargs)
        outputs = sym_layer(inputs)
        _check_output_shape("symbolic", sym_layer, outputs, (None, *input_shape[1:]))
        model = keras.Model(inputs, outputs)
        if prepare is not None:
            prepare(sym_layer)

    if run_fit:
        with _check("fit"):
            _fit_one_step(model, x, promised_zeros=promised_zeros)
    if run_saving:
        with _check("saving"):
            check_save_load(model, x)
    if run_data_formats and _accepts(layer_cls, "data_format") and "data_format" not in init_kwargs:
        with _check("data_format"):
            _check_data_formats(layer_cls, init_kwargs, input_shape, x, layer, y, data_format_atol)
    if run_mixed_precision:
        with _check("mixed_precision"):
            _check_mixed_precision(layer_cls, init_kwargs, x, layer, y)
    return layer


# ---------------------------------------------------------------------------------------------
# Gradients through the backend's own autodiff
# ---------------------------------------------------------------------------------------------


def backend_gradients(fn, args, jit=True):
    """Gradients of the scalar `fn(*args)` w.r.t. every array in `args` (NumPy in and out).
    `jit=False` skips jax's compilation (cheaper for one call of a small model)."""
    if BACKEND == "jax":
        import jax

        # jit: one compilation instead of one per primitive in eager mode (much faster on CPU
        # when the function is called many times, as the finite-difference checks do)
        grad = jax.grad(lambda *a: fn(*a), argnums=tuple(range(len(args))))
        grads = (jax.jit(grad) if jit else grad)(*args)
        return [np.asarray(g) for g in grads]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(*tensors)
        return [tf.convert_to_tensor(g).numpy() if g is not None else np.zeros_like(a) for g, a in
                zip(tape.gradient(value, tensors), args)]
    if BACKEND == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
        value = fn(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        return [g.detach().cpu().numpy() if g is not None else np.zeros_like(a)
                for g, a in zip(grads, args)]
    raise RuntimeError(f"No gradient helper for backend {BACKEND!r}")


def layer_gradients(layer, x, cotangent, **call_kwargs):
    """(dL/dx, {weight name: dL/dw}) for L = sum(layer(x) * cotangent), via the backend."""
    trainable = list(layer.trainable_variables)
    non_trainable = [v.value for v in layer.non_trainable_variables]
    cot = keras.ops.convert_to_tensor(cotangent)

    def loss(x_, *tv):
        y, _ = layer.stateless_call(list(tv), non_trainable, x_, **call_kwargs)
        return keras.ops.sum(keras.ops.cast(y, "float32") * cot)

    grads = backend_gradients(loss, [x, *[to_numpy(v) for v in trainable]])
    return grads[0], {v.name: g for v, g in zip(trainable, grads[1:])}


def finite_difference_gradient(f, arrays, index, cotangent, eps=1e-6, max_coords=None, seed=0):
    """Central-difference gradient of sum(f(*arrays) * cotangent) w.r.t. arrays[index].

    With `max_coords`, only that many randomly chosen coordinates are differenced; the others
    are NaN (and ignored by `assert_matches_oracle`).
    """
    # C order: `reshape(-1)` below must be a view (a non-contiguous copy — e.g. of a torch
    # variable stored transposed — would swallow the perturbations and give zeros).
    arrays = [np.array(a, dtype=np.float64, order="C") for a in arrays]
    target = arrays[index]
    grad = np.full(target.shape, np.nan)
    coords = np.arange(target.size)
    if max_coords is not None and target.size > max_coords:
        coords = np.random.default_rng(seed).choice(target.size, max_coords, replace=False)
    flat = target.reshape(-1)
    for c in coords:
        old = flat[c]
        flat[c] = old + eps
        plus = np.sum(f(*arrays) * cotangent)
        flat[c] = old - eps
        minus = np.sum(f(*arrays) * cotangent)
        flat[c] = old
        grad.reshape(-1)[c] = (plus - minus) / (2 * eps)
    return grad


def _assert_close(what, got, expected, rtol, atol):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {got.shape} != oracle {expected.shape}")
    known = ~np.isnan(expected)
    diff = np.abs(got - expected)[known]
    bound = (atol + rtol * np.abs(expected))[known]
    if np.any(diff > bound):
        worst = np.argmax(diff - bound)
        raise AssertionError(
            f"{what}: {int(np.sum(diff > bound))}/{diff.size} entries off; worst |diff| "
            f"{diff[worst]:.3g} (allowed {bound[worst]:.3g})"
        )


def assert_matches_oracle(
    layer,
    x,
    oracle,
    *,
    rtol=1e-5,
    atol=1e-5,
    grad_rtol=1e-4,
    grad_atol=1e-4,
    check_gradients=True,
    max_fd_coords=48,
    call_kwargs=None,
    seed=0,
):
    """Assert a built layer agrees with a NumPy oracle, forward and gradients.

    Args:
        layer: a keras_convx layer (built, or built by the call).
        x: NumPy input.
        oracle: `oracle(x, weights) -> y`, NumPy float64, where `weights` maps each trainable
            variable's name to its value. If it has an attribute `vjp` —
            `oracle.vjp(x, weights, cotangent) -> (dx, {name: dw})` — that analytic form is
            used for the gradients; otherwise central finite differences of the oracle on
            `max_fd_coords` random coordinates of the input and of every weight.
        rtol, atol: forward tolerances; grad_rtol, grad_atol: gradient tolerances.
    """
    call_kwargs = call_kwargs or {}
    y = to_numpy(layer(x, **call_kwargs))
    weights = {v.name: to_numpy(v).astype(np.float64) for v in layer.trainable_variables}
    x64 = np.asarray(x, dtype=np.float64)
    expected = oracle(x64, weights)
    _assert_close("forward", y, expected, rtol, atol)
    if not check_gradients:
        return
    cotangent = np.random.default_rng(seed + 7).standard_normal(expected.shape)
    dx, dw = layer_gradients(layer, np.asarray(x, "float32"), cotangent.astype("float32"),
                             **call_kwargs)
    if hasattr(oracle, "vjp"):
        odx, odw = oracle.vjp(x64, weights, cotangent)
    else:
        names = list(weights)

        def f(x_, *ws):
            return oracle(x_, dict(zip(names, ws)))

        arrays = [x64, *[weights[n] for n in names]]
        odx = finite_difference_gradient(f, arrays, 0, cotangent, max_coords=max_fd_coords)
        odw = {
            n: finite_difference_gradient(f, arrays, i + 1, cotangent, max_coords=max_fd_coords)
            for i, n in enumerate(names)
        }
    _assert_close("input gradient", dx, odx, grad_rtol, grad_atol)
    for name, g in dw.items():
        _assert_close(f"gradient of {name}", g, odw[name], grad_rtol, grad_atol)


class InterruptAtEpoch(keras.callbacks.Callback):
    """Raises RuntimeError("interrupted") when epoch `epoch` begins: a crash mid-`fit`, for
    the resume-exactness tests (`keras.callbacks.BackupAndRestore`)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


# ------------------------------------------------------------------ recompute (ops.core.recompute)

def recompute_stack(make_layer, recompute, channels, data_format="channels_last", depth=2,
                    size=None, policy="float32"):
    """A 1×1 Conv2D stem (so the first layer's input gradient is computed too), then `depth`
    layers `make_layer(recompute, data_format, policy)`; `size` None: unknown rows and cols."""
    shape = (size, size, channels) if data_format == "channels_last" else (channels, size, size)
    inputs = keras.Input(shape)
    h = layer_cases.conv1x1(channels, data_format, dtype=policy)(inputs)
    for _ in range(depth):
        h = make_layer(recompute, data_format, policy)(h)
    return keras.Model(inputs, h)


def check_fit_matches_reference(make_layer, shape, jit_compile, policy, reference):
    """One `fit` epoch (3 images of `shape` (rows, cols, channels) in batches of 2: the partial
    batch makes TensorFlow retrace with an unknown batch size) of a 1×1 Conv2D stem →
    `make_layer(policy)` (so the layer's input gradient is computed too; its output has the
    input's shape) gives the loss and moves every weight as it does inside the `reference()`
    context, per weight (float32, or mixed bfloat16 whose accumulations are cast back). On
    jax the reference trains compiled whatever `jit_compile` (the same maths: an uncompiled
    jax step compiles and runs each op alone, the slowest way to compute the reference)."""
    rng = np.random.default_rng(3)
    x, target = (rng.standard_normal((3, *shape)).astype("float32") for _ in range(2))
    values = None

    def fit(jit=jit_compile):
        nonlocal values
        inputs = keras.Input(shape)
        stem = keras.layers.Conv2D(shape[-1], 1, dtype=policy)
        model = keras.Model(inputs, make_layer(policy)(stem(inputs)))
        if values is None:
            values = [0.3 * rng.standard_normal(w.shape).astype("float32")
                      for w in model.get_weights()]
        model.set_weights(values)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit)
        history = model.fit(x, target, batch_size=2, shuffle=False, epochs=1, verbose=0)
        return history.history["loss"][-1], [w - v for w, v in zip(model.get_weights(), values)]

    loss, deltas = fit()
    with reference():
        ref_loss, ref_deltas = fit(True if BACKEND == "jax" else jit_compile)
    tol = 1e-4 if policy == "float32" else 3e-2
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    for got, want in zip(deltas, ref_deltas):
        assert np.linalg.norm(want) > 0, "a weight did not train"
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert error < tol, (error, got.shape)


def recompute_cases(*extra):
    """Cases for `check_recompute_trains_alike`: jit_compile × (data_format, size) × policy
    (× an optional extra factor given as `name, (value0, value1)`), as a covering array in which
    every pair of values of every two factors meets at least once (4 cases for three factors, 5
    for four, instead of 8 and 16); on torch the compiled rows are channels_first, mixed
    bfloat16 (below), so there the pairs with jit_compile=True are not all met."""
    factors = [(False, True), (("channels_last", None), ("channels_first", 9)),
               ("float32", "mixed_bfloat16")] + ([extra[1]] if extra else [])
    rows = ([(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)] if not extra else
            [(0, 0, 0, 0), (0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0)])
    for a in range(len(factors)):
        for b in range(a + 1, len(factors)):
            assert len({(row[a], row[b]) for row in rows}) == 4, (a, b)
    cases, seen = [], set()
    for row in rows:
        values = [factor[i] for factor, i in zip(factors, row)]
        jit, (data_format, size), policy, rest = values[0], values[1], values[2], values[3:]
        if BACKEND == "torch" and jit:
            # Under torch.compile the layers do not rerun (`ops.core.recompute` runs `fn` as it
            # is), so a compiled row tests torch.compile of the layer: on torch the compiled
            # rows run channels_first (the every-layer sweep of tests/test_robustness.py
            # compiles channels_last, float32, unknown sizes) in mixed bfloat16, rows that
            # become equal merged. A compiled row took 70-190 s of cold inductor compilation
            # on 2 cores (cold matrix, 2026-12-08): E4 keeps one row of two, LPSC two of three.
            (data_format, size), policy = factors[1][1], factors[2][1]
        key = (jit, data_format, size, policy, *rest)
        if key in seen:
            continue
        seen.add(key)
        cases.append(pytest.param(jit, data_format, size, policy, *rest,
                                  id="-".join([f"jit={jit}", data_format, str(size), policy,
                                               *rest])))
    return cases


RECOMPUTE_CASES = recompute_cases()


def check_recompute_trains_alike(make_layer, channels, data_format, size, jit_compile, policy):
    """Layers with `recompute=True` give the same outputs and, after one `fit` epoch (3 images
    in batches of 2: the partial batch retraces TensorFlow with an unknown batch size), the
    same weights as with `recompute=False`, per weight (float32 or mixed bfloat16: the rerun
    reads the weights as the forward pass rounded them). Torch compiled (`jit_compile=True`),
    where the layers do not rerun (`ops.core.recompute` runs `fn` as it is inside
    torch.compile), trains on 4 images: a partial batch recompiled each model's step for a
    dynamic batch size, 20-45 s of inductor each, testing torch.compile, not recompute (the
    every-layer compiled sweep of tests/test_robustness.py changes the batch size with the
    image size, under torch.compile too). Both models train with the same `jit_compile`: a
    compiled step's mixed bfloat16 updates differ from an uncompiled one's by more than 3e-2
    (measured on tensorflow and torch)."""
    rng = np.random.default_rng(5)
    rows, cols = (11, 9) if size is None else (size, size)
    images = 4 if BACKEND == "torch" and jit_compile is True else 3
    shape = ((images, rows, cols, channels) if data_format == "channels_last"
             else (images, channels, rows, cols))
    x, target = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    # Under torch.compile the layers do not rerun: one layer (not a stack of two, whose second
    # layer reruns on the first's output) tests its compilation (E4's compiled row: 141 s
    # alone, cold cache, against 191 s for the stack of two in the cold matrix).
    depth = 1 if BACKEND == "torch" and jit_compile is True else 2
    models = {flag: recompute_stack(make_layer, flag, channels, data_format, depth=depth,
                                    size=size, policy=policy) for flag in (False, True)}
    values = [0.3 * rng.standard_normal(w.shape).astype("float32")
              for w in models[False].get_weights()]
    outputs, deltas = {}, {}
    for flag, model in models.items():
        model.set_weights(values)
        outputs[flag] = to_numpy(model(x))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
        model.fit(x, target, batch_size=2, shuffle=False, epochs=1, verbose=0)
        deltas[flag] = [w - v for w, v in zip(model.get_weights(), values)]
    tol = 1e-4 if policy == "float32" else 3e-2
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=tol, atol=tol)
    for got, want in zip(deltas[True], deltas[False]):
        assert np.linalg.norm(want) > 0, "a weight did not train"
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol, got.shape


def jax_on_cpu():
    """True on the jax backend computing on its CPU (where its banded paths run)."""
    if BACKEND != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def jax_step_temp_bytes(model, x, with_value=True):
    """XLA's temp bytes of the jitted value-and-grad (`with_value=False`: the grad alone) of
    `mean(model(x)²)` over the trainable weights (value-and-grad is what Keras' jax trainer
    compiles; every intermediate at its peak, no inputs, weights or compile scratch)."""
    import jax

    frozen = [v.value for v in model.non_trainable_variables]

    def loss(weights, x):
        return keras.ops.mean(model.stateless_call(weights, frozen, x, training=True)[0] ** 2)

    weights = [v.value for v in model.trainable_variables]
    step = jax.jit(jax.value_and_grad(loss) if with_value else jax.grad(loss)).lower(weights, x)
    return step.compile().memory_analysis().temp_size_in_bytes


def kept_for_backward_bytes(model, x, jit_compile=False):
    """Bytes a training step keeps from its forward pass for its backward pass: jax, XLA's temp
    bytes of the jitted gradient; torch, the tensors autograd saves (counted by a hook);
    tensorflow, the CPU allocator's peak during a graph-mode gradient step above what was
    allocated before it (after a first step; repeatable to the byte in one process history),
    which includes the backward pass's own temporaries; TensorFlow's oneDNN CPU allocator does
    not count blocks under 256 KiB, so tensors measured there must be larger;
    `jit_compile=True` compiles that step whole with XLA (tensorflow only)."""
    if BACKEND == "jax":
        return jax_step_temp_bytes(model, x, with_value=False)
    if BACKEND == "torch":
        import torch

        seen = {}

        def pack(t):
            seen[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            keras.ops.mean(model(x, training=True) ** 2)
        return sum(seen.values())
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit_compile)
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(model(x, training=True) ** 2)
            return tape.gradient(loss, model.trainable_variables)

        step(x)  # trace first
        if tf.config.list_logical_devices("GPU"):
            pytest.skip("measured on the CPU allocator")
        try:  # documented for GPUs and TPUs; the x86 CPU build tracks the CPU allocator too
            tf.config.experimental.reset_memory_stats("CPU:0")
        except ValueError:
            pytest.skip("this TensorFlow build does not track CPU memory")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x)
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    raise NotImplementedError(f"no measure on {BACKEND}")


def torch_step_peak_bytes(model, x):
    """On torch's CPU: the most bytes live at once during a gradient step of `model` (loss
    `mean(model(x)²)`) above what was live before it, from the profiler's record of every
    allocation and free (deterministic for one sequence of ops; torch's CPU allocator keeps
    no statistics of its own)."""
    import torch  # noqa: PLC0415

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as profile:
        keras.ops.mean(model(x, training=True) ** 2).backward()
    live = peak = 0
    for event in sorted(profile.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


@contextlib.contextmanager
def torch_compile_stays_compiled(caplog, limit):
    """On torch: lowers torch.compile's per-function graph limit (`recompile_limit`, 8 by
    default) to `limit` for the block, then fails if any function passed it (torch then
    runs it uncompiled, logging a warning but raising nothing). Elsewhere: the block as is."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch  # noqa: PLC0415

    with torch._dynamo.config.patch(recompile_limit=limit):
        yield
    assert "recompile_limit" not in caplog.text, caplog.text
