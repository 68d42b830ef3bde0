"""E4Conv2D: oracle agreement, exact equivariance, negative controls, aggregation paths."""

import contextlib
import importlib

import keras
import numpy as np
import pytest

from keras_convx import analysis
from keras_convx import ops
from keras_convx.layers import E4Conv2D
from keras_convx.layers import GroupConv2D
from keras_convx.ops import e4 as e4ops
from keras_convx.ops import group as gops
from tests import harness
from tests.oracles import group as oracle

ORDER = {"p4": 4, "p4m": 8, "c8": 8, "d8": 16, "c3": 3, "d3": 6}


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.get_weights():
        values.append(rng.standard_normal(w.shape).astype("float32"))
    layer.set_weights(values)


def _e4_oracle(layer):
    cfg = layer.get_config()

    def fn(x, w):
        return oracle.e4(x, w, cfg["group"], cfg["kernel_size"], cfg["slices"], cfg["strides"], cfg["epsilon"])

    if cfg["data_format"] == "channels_first":
        return lambda x, w: np.moveaxis(fn(np.moveaxis(x, 1, -1), w), -1, 1)
    return fn


CASES = [
    ("p4", dict(filters=4, kernel_size=3, reduction_ratio=1, slices=2), (2, 6, 6, 2)),
    ("p4", dict(filters=4, kernel_size=5, reduction_ratio=2, slices=1, strides=2), (1, 8, 8, 4)),
    ("p4m", dict(filters=2, kernel_size=3, reduction_ratio=2, slices=2), (1, 5, 5, 2)),
    ("p4m", dict(filters=2, kernel_size=3, reduction_ratio=1, slices=1, strides=2, official_compat=True), (1, 6, 6, 2)),
    # rotations off the 90° grid (steered through the basis), with and without the mirror
    ("c8", dict(filters=4, kernel_size=3, reduction_ratio=1, slices=2), (1, 5, 5, 2)),
    ("d3", dict(filters=2, kernel_size=5, reduction_ratio=2, slices=1, strides=2), (1, 6, 6, 2)),
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_oracle_forward_and_gradients(case, data_format):
    group, kwargs, (b, h, w, fields) = CASES[case]
    layer = E4Conv2D(group=group, data_format=data_format, **kwargs)
    x = np.random.default_rng(1).standard_normal((b, h, w, fields * ORDER[group])).astype("float32")
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    layer.build(x.shape)
    _randomize(layer)
    harness.assert_matches_oracle(layer, x, _e4_oracle(layer), rtol=1e-4, atol=1e-4,
                                  grad_rtol=2e-3, grad_atol=2e-3, max_fd_coords=24)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("group", ["p4", "p4m", "c8", "d3"])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=5, reduction_ratio=1, slices=2),
                                    dict(kernel_size=3, reduction_ratio=2, slices=4)])
def test_exactly_equivariant(group, kwargs, data_format):
    # On the exact subgroup (90° rotations, grid mirrors) of every group.
    n = ORDER[group]
    layer = E4Conv2D(4, group=group, data_format=data_format, **kwargs)
    x = np.random.default_rng(2).standard_normal((2, 11, 11, 4 * n)).astype("float32")
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    layer.build(x.shape)
    _randomize(layer)  # random tied GroupNorm γ, β included
    errors = analysis.equivariance_error(layer, x, group, per_element=True, elements="exact")
    assert len(errors) == len(gops.exact_elements(group)) == {"c8": 4, "d3": 2}.get(group, n)
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_negative_control_untied_group_norm_breaks_equivariance(group):
    n = ORDER[group]
    layer = E4Conv2D(4, 3, group=group, reduction_ratio=1, slices=2, official_compat=True)
    x = np.random.default_rng(3).standard_normal((2, 9, 9, 4 * n)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)  # random γ, β per orientation copy, as after official training
    assert analysis.equivariance_error(layer, x, group) > 0.05
    # With equal copies (its initial state) the untied form is still equivariant.
    layer.norm_gamma.assign(np.ones(layer.norm_gamma.shape, "float32"))
    layer.norm_beta.assign(np.zeros(layer.norm_beta.shape, "float32"))
    assert analysis.equivariance_error(layer, x, group) <= 1e-5


@pytest.mark.parametrize("group", ["p4", "p4m", "c8"])
def test_negative_control_without_steering_breaks_equivariance(group):
    n = ORDER[group]
    layer = E4Conv2D(4, 3, group=group, reduction_ratio=1, slices=2)
    x = np.random.default_rng(4).standard_normal((2, 9, 9, 4 * n)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)
    # The generator's columns without the steering (the layer reads its table as a constant).
    layer._generator_columns = gops.steered_generator_columns(group, 3, 2, steering=False)
    assert analysis.equivariance_error(layer, x, group, elements="exact") > 0.05


@pytest.mark.parametrize("strides", [1, 2])
def test_shift_aggregation_equals_patch_reference(strides):
    rng = np.random.default_rng(5)
    k = 3
    v = rng.standard_normal((2, 8, 8, 3, 8)).astype("float32")
    oh = 8 // strides
    kernels = rng.standard_normal((2, oh, oh, k * k, 8)).astype("float32")
    cot = rng.standard_normal((2, oh, oh, 3, 8)).astype("float32")

    def loss(fn):
        return lambda v_, k_: keras.ops.sum(fn(v_, k_, k, (strides, strides)) * keras.ops.convert_to_tensor(cot))

    ref = harness.to_numpy(gops.aggregate_patches(v, kernels, k, (strides, strides)))
    g_ref = harness.backend_gradients(loss(gops.aggregate_patches), [v, kernels])
    # The keras.ops shifts, and whatever the dispatch point runs (a backend's own form).
    for fn in (gops.aggregate_shifts, gops.aggregate):
        fast = harness.to_numpy(fn(v, kernels, k, (strides, strides)))
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
        g_fast = harness.backend_gradients(loss(fn), [v, kernels])
        for a, b in zip(g_fast, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("per_channel", [False, True])
def test_group_norm_relu_matches_oracle_forward_and_gradients(per_channel):
    """E4's generator normalisation (`ops.group.group_norm_relu`, dispatched: torch's fused
    GroupNorm, `keras.ops` elsewhere) against the NumPy formula: forward, and the gradients
    w.r.t. the input, γ and β against central differences of the oracle; γ, β one per group
    (tied) or one per channel (the official code's untied form). Some outputs are clipped by
    the relu (β < 0) and the input has a large mean (the variance's E[t²] − μ² form)."""
    rng = np.random.default_rng(11)
    groups, per = 3, 4
    t = (rng.standard_normal((2, 5, 6, groups * per)) * 2 + 3).astype("float32")
    shape = (groups, per if per_channel else 1)
    gamma = rng.uniform(0.5, 1.5, shape).astype("float32")
    beta = rng.uniform(-0.5, 0.5, shape).astype("float32")
    cot = rng.standard_normal(t.shape)

    def fn(*args):
        return gops.group_norm_relu(*args, groups, 1e-3)

    def want(*args):
        return oracle.group_norm_relu(*args, groups, 1e-3)

    np.testing.assert_allclose(harness.to_numpy(fn(t, gamma, beta)), want(t, gamma, beta),
                               rtol=1e-5, atol=1e-5)
    loss = lambda *args: keras.ops.sum(fn(*args) * keras.ops.convert_to_tensor(cot, "float32"))  # noqa: E731
    got = harness.backend_gradients(loss, [t, gamma, beta])
    for index, g in enumerate(got):
        expected = harness.finite_difference_gradient(want, [t, gamma, beta], index, cot, eps=1e-4,
                                                      max_coords=40)
        known = ~np.isnan(expected)
        np.testing.assert_allclose(np.asarray(g)[known], expected[known], rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("band_bytes", [None, 64])
@pytest.mark.parametrize("strides, size", [(1, (7, 5)), (1, (9, 4)), (2, (8, 6)), (2, (9, 6))])
def test_generated_and_aggregated_equals_the_kernels_then_patches(strides, size, band_bytes,
                                                                  monkeypatch):
    """The fused generation + aggregation (on a CPU tiled by bands of rows, kernels
    regenerated in the backward pass; `band_bytes=64` forces 2-row bands on every backend
    that tiles, and heights 7 and 9 leave a partial band, at stride 2 too: 5 output rows)
    equals building every kernel
    (`features @ block`) and the patch reference, forward and all three gradients."""
    if band_bytes is not None:
        monkeypatch.setattr(gops, "BAND_BYTES", band_bytes)
    _check_fused_against_patches(strides, size)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's opt-in compiled bands")
@pytest.mark.parametrize("band_bytes", [None, 64])
def test_torch_compiled_bands_equal_the_kernels_then_patches(band_bytes, opt_in_fast_paths,
                                                             monkeypatch, caplog):
    """With the opt-in fast paths, eager torch's CPU bands run each band's k² multiply-adds as
    torch.compile'd expressions (one band kept, or 2-row bands and a partial last one): the
    same forward and three gradients as the patch reference; the compiled band functions
    were called, one compilation per function and band shape, and none fell back to
    uncompiled code at torch's recompile limit (set to 1 here: a function compiled for two
    shapes, or shared across configurations, would pass it)."""
    from keras_convx.ops import _torch  # noqa: PLC0415 (imports torch: torch backend only)

    if band_bytes is not None:
        monkeypatch.setattr(gops, "BAND_BYTES", band_bytes)
    _torch._compiled_band.cache_clear()
    with harness.torch_compile_stays_compiled(caplog, limit=1):
        _check_fused_against_patches(1, (7, 5))
    info = _torch._compiled_band.cache_info()
    # forward and backward × (one band kept | 2-row bands and the last 1-row band: 4 bands)
    assert info.misses == (4 if band_bytes else 2), info
    assert info.hits >= (2 * 4 - 4 if band_bytes else 0), info


@pytest.mark.parametrize("band_bytes", [None, 64])
@pytest.mark.parametrize("size, k, tied, epsilon", [
    ((7, 5), 3, True, 1e-5), ((9, 4), 5, False, 0.3), ((6, 6), 1, True, 0.3),
    ((3, 4), 5, True, 1e-5), ((9, 5), 7, False, 1e-5)])
def test_layer_op_equals_step_by_step_reference(size, k, tied, epsilon, band_bytes, monkeypatch):
    """`ops.e4.e4_apply` (the CPU of every backend: the whole layer fused by bands, which ran
    — `band_bytes=64` forcing 2-row bands, at height 7 and 9 a partial last one, at k 7
    also lower than the kernel's half-width; elsewhere each step's own fast path) equals the
    step-by-step reference with the patch aggregation, forward and the gradients of all six
    inputs (x, the reduction, γ, β tied or per channel, the block and the encoder); a large ε
    too, where the group norm's ε shows."""
    if band_bytes is not None:
        monkeypatch.setattr(gops, "BAND_BYTES", band_bytes)
    rng = np.random.default_rng(3)
    (h, w), n, c, groups, m, a = size, 4, 6, 2, 3, 8
    shapes = [(2, h, w, c), (c, groups * n), (groups, 1 if tied else n), (groups, 1 if tied else n),
              (groups * n + 1, k * k * a), (c, m * a)]
    args = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    args[2] += 1.0  # γ around one
    cot = keras.ops.convert_to_tensor(rng.standard_normal((2, h, w, m, a)).astype("float32"))
    if _jax_on_cpu():
        from keras_convx.ops import _jax_e4  # noqa: PLC0415 (imports jax: jax backend only)

        _jax_e4.fused_e4.cache_clear()
    fused_calls = _count_fused_layer(monkeypatch)

    def loss(implementation):
        return lambda *x: keras.ops.sum(
            e4ops.e4_apply(*x, k, 1, epsilon, implementation) * cot)

    np.testing.assert_allclose(harness.to_numpy(e4ops.e4_apply(*args, k, 1, epsilon)),
                               harness.to_numpy(e4ops.e4_apply(*args, k, 1, epsilon, "patches")),
                               rtol=1e-4, atol=1e-4)
    got = harness.backend_gradients(loss("auto"), args)
    want = harness.backend_gradients(loss("patches"), args)
    for name, g, r in zip(("x", "reduce", "gamma", "beta", "block", "encoder"), got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(r).max()),
                                   err_msg=name)
    if _jax_on_cpu():  # the fused path ran (built once for these bands, then reused)
        info = _jax_e4.fused_e4.cache_info()
        assert info.misses == 1 and info.hits >= 1, info
    if fused_calls is not None:  # tensorflow, torch: the fused path ran, in 2-row bands when forced
        assert len(fused_calls) >= 2 and (band_bytes is None or set(fused_calls) == {2}), fused_calls


def _count_fused_layer(monkeypatch):
    """On tensorflow and torch, a list that every call of E4's fused layer (`fused_e4` of
    `ops._tensorflow_e4` / `ops._torch_e4`, and tensorflow's `fused_e4_xla` inside XLA, as
    its backend's fast path calls them) appends its band height to; None on jax (whose fused
    op is counted by its build cache)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return None
    fast_paths = importlib.import_module(f"keras_convx.ops._{backend}")
    calls = []

    def counted(fused):
        def call(*args):
            calls.append(args[8])  # x, reduce, gamma, beta, block, encoder, k, epsilon, rows, ...
            return fused(*args)
        return call

    for name in ("fused_e4", "fused_e4_xla"):
        if hasattr(fast_paths, name):
            monkeypatch.setattr(fast_paths, name, counted(getattr(fast_paths, name)))
    return calls


def _check_fused_against_patches(strides, size):
    rng = np.random.default_rng(8)
    k, (h, w), a, f = 3, size, 8, 5
    v = rng.standard_normal((2, h, w, 3, a)).astype("float32")
    oh, ow = -(-h // strides), -(-w // strides)
    features = rng.standard_normal((2, oh, ow, f)).astype("float32")
    block = rng.standard_normal((f, k * k * a)).astype("float32")
    cot = rng.standard_normal((2, oh, ow, 3, a)).astype("float32")

    def patches(v_, f_, b_):
        kernels = keras.ops.reshape(keras.ops.matmul(f_, b_), (2, oh, ow, k * k, a))
        return gops.aggregate_patches(v_, kernels, k, (strides, strides))

    def fused(v_, f_, b_):
        return gops.generate_and_aggregate(v_, f_, b_, k, (strides, strides))

    def loss(fn):
        return lambda *args: keras.ops.sum(fn(*args) * keras.ops.convert_to_tensor(cot))

    np.testing.assert_allclose(harness.to_numpy(fused(v, features, block)),
                               harness.to_numpy(patches(v, features, block)),
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(harness.backend_gradients(loss(fused), [v, features, block]),
                         harness.backend_gradients(loss(patches), [v, features, block])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _torch_on_cpu():
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.cuda.is_available()


_jax_on_cpu = harness.jax_on_cpu


@pytest.mark.skipif(not _jax_on_cpu(), reason="XLA's buffer assignment of the tiled jax CPU path")
def test_tiled_step_never_holds_all_the_kernels():
    """XLA's compiled training step of the fused op (temp bytes, deterministic) stays below
    the size of the whole kernel tensor, which the reference step holds (with its cotangent)."""
    import jax

    rng = np.random.default_rng(0)
    k, a, f, b, s = 5, 8, 9, 4, 48
    args = [jax.numpy.asarray(rng.standard_normal(shape), "float32")
            for shape in ((b, s, s, 4, a), (b, s, s, f), (f, k * k * a))]
    kernel_bytes = b * s * s * k * k * a * 4

    def temp_bytes(fn):
        step = jax.jit(jax.grad(lambda *x: jax.numpy.sum(fn(*x) ** 2), argnums=(0, 1, 2)))
        return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

    fused = temp_bytes(lambda *x: gops.generate_and_aggregate(*x, k, (1, 1)))
    whole = temp_bytes(lambda *x: gops.generate_and_aggregate(*x, k, (1, 1), "shifts"))
    assert whole > 2 * kernel_bytes
    assert fused < kernel_bytes, (fused, kernel_bytes)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's CPU allocator")
def test_tensorflow_banded_step_never_holds_all_the_kernels(monkeypatch):
    """A graph-mode gradient step of the fused op on TensorFlow's CPU (banded: 32 bands of
    3 rows with 256 KiB bands) peaks below half of one whole kernel tensor in the allocator
    (measured 6.3 MB of 28); the whole-tensor path (the kernels, then the XLA aggregation)
    holds more than two (measured 144–175 MB)."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    monkeypatch.setattr(gops, "BAND_BYTES", 2**15)  # 256 KiB of kernels per image and band
    rng = np.random.default_rng(0)
    k, a, f, b, s = 5, 8, 9, 4, 96
    args = [tf.constant(rng.standard_normal(shape), tf.float32)
            for shape in ((b, s, s, 1, a), (b, s, s, f), (f, k * k * a))]
    kernel_bytes = b * s * s * k * k * a * 4

    def peak_bytes(implementation):
        @tf.function
        def step(*x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = gops.generate_and_aggregate(*x, k, (1, 1), implementation)
                loss = tf.reduce_sum(y ** 2)
            return tape.gradient(loss, x)

        step(*args)  # trace and compile first
        try:  # documented for GPUs and TPUs; the x86 CPU build tracks the CPU allocator too
            tf.config.experimental.reset_memory_stats("CPU:0")
        except ValueError:
            pytest.skip("this TensorFlow build does not track CPU memory")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(*args)
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before

    fused, whole = peak_bytes("auto"), peak_bytes("shifts")
    assert whole > 2 * kernel_bytes, (whole, kernel_bytes)
    assert fused < kernel_bytes / 2, (fused, kernel_bytes)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's CPU allocator")
def test_tensorflow_band_backward_allocates_little_beyond_its_outputs():
    """The XLA-compiled band backward's two halves (`xla_band_dkernels` and `xla_band_dinput`
    of `ops._tensorflow_e4`, which both band loops call) allocate little beyond their
    outputs: the kernels' cotangent written in place (measured 0.0× the kernels' size above
    it; stacking the k² sums, XLA copied them into a second kernels-sized buffer: 1.16×), and
    the input's cotangent from the kernels padded by the product (0.2×; padding them itself
    it held a padded copy, 1.45×). Both under 0.75×."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    band = importlib.import_module("keras_convx.ops._tensorflow_e4")
    rng = np.random.default_rng(0)
    b, r, w, m, a = 8, 20, 32, 4, 8
    vh, padded_kernels, dy = (tf.constant(rng.standard_normal(shape), tf.float32) for shape in (
        (b, r + 4, w + 4, m, a), (b, r, w + 8, 25, a), (b, r, w, m, a)))
    kernel_bytes = b * r * w * 25 * a * 4

    def above_output(fn, *args):
        fn(*args)  # compile first
        try:  # documented for GPUs and TPUs; the x86 CPU build tracks the CPU allocator too
            tf.config.experimental.reset_memory_stats("CPU:0")
        except ValueError:
            pytest.skip("this TensorFlow build does not track CPU memory")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        out = fn(*args)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
        return out, peak - out.shape.num_elements() * 4

    dkernels, extra = above_output(band.xla_band_dkernels(5), vh, dy)
    assert dkernels.shape == (b, r, w, 25, a)
    assert extra < 0.75 * kernel_bytes, (extra, kernel_bytes)
    dvh, extra = above_output(band.xla_band_dinput(5), padded_kernels, dy)
    assert dvh.shape == vh.shape
    assert extra < 0.75 * kernel_bytes, (extra, kernel_bytes)


@pytest.mark.parametrize("jit_compile, policy, recompute", [
    (False, "float32", False), (False, "mixed_bfloat16", True), (True, "float32", True),
    (True, "mixed_bfloat16", False)])
def test_tiled_paths_train_like_the_reference(jit_compile, policy, recompute, monkeypatch):
    """One `fit` epoch (3 images in batches of 2: the partial batch makes TensorFlow retrace
    with an unknown batch size) of a 1×1 Conv2D → E4Conv2D model (so the E4 layer's input
    gradient is computed too) with the bands forced on (`BAND_BYTES=64`: 2-row bands, 11 rows
    leave a partial one) moves every weight as the `keras.ops` reference does: jax's and
    tensorflow's and torch's whole layer fused by bands (tensorflow's unrolled with
    `jit_compile` False, in a `tf.while_loop` with True), which ran in 2-row bands; float32 and
    mixed bfloat16 (the bands' float32 accumulations cast back); with and without
    `recompute`."""
    if keras.backend.backend() == "torch" and jit_compile:
        pytest.skip("torch.compile traces the whole-kernel form (the bands are eager torch)")
    monkeypatch.setattr(gops, "BAND_BYTES", 64)
    calls = _count_fused_layer(monkeypatch)
    harness.check_fit_matches_reference(
        lambda policy: E4Conv2D(4, 3, group="p4", reduction_ratio=1, slices=2,
                                recompute=recompute, dtype=policy),
        (11, 9, 16), jit_compile, policy, ops.reference_mode)
    if calls is not None:
        assert calls and set(calls) == {2}, calls


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA steps")
@pytest.mark.parametrize(("band_bytes", "policy"), [(None, "float32"), (64, "mixed_bfloat16")])
def test_tensorflow_xla_step_runs_the_layer_in_loop_bands(policy, band_bytes, monkeypatch):
    """Inside a `jit_compile=True` step, tensorflow's E4 layer runs as the iterations of a
    `tf.while_loop` over bands of rows (`fused_e4_xla`) at every image size: here bands of 2
    rows (with `BAND_BYTES=64`, and by default at this size: at least 16 bands), 11 rows
    leaving a partial one; `fit` moves every weight as the `keras.ops` reference does. (Both
    settings give the same bands here, so each runs with one policy: 4 cases took 80 s.)"""
    if band_bytes:
        monkeypatch.setattr(gops, "BAND_BYTES", band_bytes)
    calls = _count_fused_layer(monkeypatch)  # the loop bands', with the unrolled ones failing:
    fast_paths = importlib.import_module("keras_convx.ops._tensorflow")
    monkeypatch.setattr(fast_paths, "fused_e4", lambda *args: pytest.fail("unrolled bands"))
    harness.check_fit_matches_reference(
        lambda policy: E4Conv2D(4, 3, group="p4", reduction_ratio=1, slices=2, dtype=policy),
        (11, 9, 16), True, policy, ops.reference_mode)
    assert calls and set(calls) == {2}, calls


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA steps")
def test_tensorflow_xla_step_holds_a_fraction_of_the_reference():
    """The allocator's peak of a `jit_compile=True` gradient step of a 1×1 stem → E4Conv2D
    (8 fields, 32 px, batch 4, k 5) with the layer's loop bands is under 0.4× the same step
    run by the reference: measured 8 against 32 MB (XLA's temp buffer, in whole powers of
    two here); with the bands unrolled, as before, which XLA scheduled together, 16 MB."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 32, 32, 32)), tf.float32)
    inputs = keras.Input((32, 32, 32))
    model = keras.Model(inputs, E4Conv2D(8, 5, reduction_ratio=1, slices=2)(
        keras.layers.Conv2D(32, 1)(inputs)))

    def peak(mode):  # a step traced and compiled in `mode`
        with mode():
            return harness.kept_for_backward_bytes(model, x, jit_compile=True)

    bands, reference = peak(contextlib.nullcontext), peak(ops.reference_mode)
    assert bands < 0.4 * reference, (bands, reference)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's opt-in compiled bands")
def test_torch_compiled_bands_train_like_the_reference(opt_in_fast_paths, monkeypatch, caplog):
    """`fit` as above with torch's opt-in compiled bands (2-row bands and a partial one, a
    partial batch), mixed bfloat16, inside a recomputed layer (torch.utils.checkpoint reruns
    the compiled forward): every weight moves as with the `keras.ops` reference; the
    compiled band functions ran, each compiled once (torch's graph limit lowered to 1)."""
    from keras_convx.ops import _torch  # noqa: PLC0415 (imports torch: torch backend only)

    monkeypatch.setattr(gops, "BAND_BYTES", 64)
    _torch._compiled_band.cache_clear()
    with harness.torch_compile_stays_compiled(caplog, limit=1):
        harness.check_fit_matches_reference(
            lambda policy: E4Conv2D(4, 3, group="p4", reduction_ratio=1, slices=2,
                                    recompute=True, dtype=policy),
            (11, 9, 16), False, "mixed_bfloat16", ops.reference_mode)
    # forward and backward × (2-row, 1-row band) × (batch 2, batch 1)
    assert _torch._compiled_band.cache_info().misses == 8, _torch._compiled_band.cache_info()


def test_dispatched_layer_equals_reference_mode(opt_in_fast_paths):
    """Whatever aggregation the dispatch point picks agrees with the patch reference."""
    layer = E4Conv2D(4, 5, group="p4", reduction_ratio=1, slices=2)
    x = np.random.default_rng(6).standard_normal((2, 10, 10, 16)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)
    cot = np.random.default_rng(7).standard_normal((2, 10, 10, 16)).astype("float32")
    y = harness.to_numpy(layer(x))
    dx, dw = harness.layer_gradients(layer, x, cot)
    with ops.reference_mode():
        ref_y = harness.to_numpy(layer(x))
        ref_dx, ref_dw = harness.layer_gradients(layer, x, cot)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4)
    for name in ref_dw:
        np.testing.assert_allclose(dw[name], ref_dw[name], rtol=1e-4, atol=2e-4)


def _official_param_count(cin, cout, k, r, gc, order):
    """Parameters of the official E4_C4/E4_D4 module, from its submodules' shapes."""
    cr = int(cin // r)
    v = cout * cin * order  # C_4_1x1(cin, cout)
    conv1 = cr * cin * order  # C_4_1x1(cin, cr)
    group_norm = 2 * cr * order  # nn.GroupNorm(cr, cr·|G|) affine
    conv2 = cr * k * k * (cout // gc) + k * k * (cout // gc)  # Conv3d(cr, k²·s, 1) + bias
    return v + conv1 + group_norm + conv2


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("cin, cout, k, r, gc", [(16, 16, 5, 1, 8), (24, 24, 5, 2, 2), (32, 32, 3, 2, 2)])
def test_parameter_count_official_compat_and_tied(group, cin, cout, k, r, gc):
    n = ORDER[group]
    official = E4Conv2D(cout, k, group=group, reduction_ratio=r, slices=cout // gc, official_compat=True)
    official.build((None, 8, 8, cin * n))
    assert official.count_params() == _official_param_count(cin, cout, k, r, gc, n)
    tied = E4Conv2D(cout, k, group=group, reduction_ratio=r, slices=cout // gc)
    tied.build((None, 8, 8, cin * n))
    assert official.count_params() - tied.count_params() == 2 * int(cin // r) * (n - 1)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(filters=4, kernel_size=3, group="p4", reduction_ratio=2, slices=2), (2, 6, 6, 16)),
        (dict(filters=2, kernel_size=3, group="p4m", reduction_ratio=1, slices=1, strides=2), (2, 6, 6, 16)),
        (dict(filters=4, kernel_size=3, group="p4", reduction_ratio=1, slices=2, recompute=True),
         (2, 6, 6, 16)),
    ],
)
def test_layer_contract(kwargs, shape):
    harness.run_layer_test(E4Conv2D, kwargs, shape, data_format_atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(filters=4, kernel_size=3, group="c0"), "group"),
        (dict(filters=4, kernel_size=3, slices=3), "slices"),
        (dict(filters=4, kernel_size=3, reduction_ratio=0.5), "reduction_ratio"),
        (dict(filters=4, kernel_size=4), "kernel_size"),
        (dict(filters=4, kernel_size=3, strides=3), "strides"),
        (dict(filters=4, kernel_size=3, data_format="NHWC"), "data_format"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E4Conv2D(**kwargs)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_recompute_must_be_a_bool(value):
    with pytest.raises(TypeError, match="recompute"):
        E4Conv2D(4, 3, recompute=value)


def test_reduction_leaving_no_generator_channels_is_rejected():
    with pytest.raises(ValueError, match="reduction_ratio"):
        E4Conv2D(4, 3, reduction_ratio=4)(np.zeros((1, 5, 5, 2 * 4), "float32"))



def _e4(recompute, data_format, policy):
    return E4Conv2D(4, 3, reduction_ratio=1, slices=2, data_format=data_format,
                    recompute=recompute, dtype=policy)


@pytest.mark.parametrize("jit_compile, data_format, size, policy", harness.RECOMPUTE_CASES)
def test_recompute_trains_like_keeping_everything(jit_compile, data_format, size, policy,
                                                  monkeypatch):
    """`recompute=True` (each layer keeps its input alone and reruns its forward pass in the
    backward pass) gives the same outputs and `fit` updates as keeping everything
    (`harness.check_recompute_trains_alike`; torch reruns in eager mode only), in every pair of
    jit_compile × (format, size) × policy (on torch the compiled rows are channels_first, mixed
    bfloat16: `harness.recompute_cases`). On tensorflow and torch the layers run fused by
    bands: in the eager call, and in `fit` (tensorflow: its graph at a static size without
    XLA; torch: its eager steps, not under torch.compile)."""
    calls = _count_fused_layer(monkeypatch)
    harness.check_recompute_trains_alike(_e4, 16, data_format, size, jit_compile, policy)
    if calls is not None:  # eager: each model's layer; fit: forward passes and a rerun
        in_fit = jit_compile is False and (size is not None or keras.backend.backend() == "torch")
        assert len(calls) >= (3 if in_fit else 1), calls


def _without_fused_layer(monkeypatch):
    """E4's layer-wide fused path off: the layer runs step by step (the reference of
    `ops.e4.e4_apply`, each step through its own fast path)."""
    fast_paths = importlib.import_module(f"keras_convx.ops._{keras.backend.backend()}").FAST_PATHS
    monkeypatch.delitem(fast_paths, "e4_apply")


def _kept_by_four_layers(recompute):
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((4, 24, 24, 16)).astype("float32"))
    return harness.kept_for_backward_bytes(
        harness.recompute_stack(_e4, recompute, 16, depth=4, size=24), x)


def test_recompute_keeps_less_for_the_backward_pass(monkeypatch):
    """Four E4 layers in a row, step by step: with `recompute=True` the step keeps far less
    (jax: XLA's temp bytes; torch: the tensors autograd saves, measured 103 → 20 MB at 64 px;
    tensorflow: the allocator's peak of the step, 7.9 → 2.1 MB here, 3.7 MB when the
    recomputed layers held their whole kernel tensor instead of tiling it)."""
    _without_fused_layer(monkeypatch)
    kept = {flag: _kept_by_four_layers(flag) for flag in (False, True)}
    limit = {"jax": 0.8, "torch": 0.35, "tensorflow": 0.37}[keras.backend.backend()]
    assert kept[True] < limit * kept[False], kept


@pytest.mark.skipif(not (_jax_on_cpu() or _torch_on_cpu()),
                    reason="jax's and torch's fused E4 layers are CPU paths (tensorflow's "
                           "allocator does not count blocks under 256 KiB; these bands are smaller)")
def test_fused_layer_keeps_as_little_as_recomputing(monkeypatch):
    """The layer-wide fused path keeps only each layer's input (and per-image statistics):
    four layers keep as little as the step-by-step path does with `recompute=True` and far
    less than without it; `recompute=True` on top of it changes little. Measured here: jax
    (XLA's temp bytes) 5.81 against 5.82 and 7.58 MB, 5.68 with recompute; torch (the tensors
    autograd saves) 0.88 against 0.85 and 5.79 MB, 0.85 with recompute."""
    fused = {flag: _kept_by_four_layers(flag) for flag in (False, True)}
    _without_fused_layer(monkeypatch)
    stepwise = {flag: _kept_by_four_layers(flag) for flag in (False, True)}
    assert fused[False] < 0.85 * stepwise[False], (fused, stepwise)
    assert fused[False] < 1.1 * stepwise[True], (fused, stepwise)
    assert fused[True] < 1.1 * stepwise[True], (fused, stepwise)


@pytest.mark.skipif(not _jax_on_cpu(), reason="XLA's buffer assignment of jax's fused CPU layer")
def test_jax_fused_layer_step_holds_no_image_sized_cotangent_buffer():
    """XLA's temp bytes of a training step of a 1×1 stem → E4Conv2D (8 fields, 32 px, batch 8,
    k 5) against the same step with a GroupConv2D 5×5: measured 6.9 against 5.1 MB (1.35×).
    The backward pass writes x's gradient once per row, unpadded, and keeps no float32
    image-sized cotangent of the normalisation (dz); when it did (padded dx, dz kept for a
    second pass), 8.1 MB (1.57×)."""
    x = np.random.default_rng(0).standard_normal((8, 32, 32, 32)).astype("float32")

    def temp_bytes(layer):
        inputs = keras.Input((32, 32, 32))
        model = keras.Model(inputs, layer(keras.layers.Conv2D(32, 1)(inputs)))
        return harness.jax_step_temp_bytes(model, x)

    from keras_convx.ops import _jax_e4  # noqa: PLC0415 (imports jax: jax backend only)

    _jax_e4.fused_e4.cache_clear()
    fused = temp_bytes(E4Conv2D(8, 5, reduction_ratio=1, slices=2))
    assert _jax_e4.fused_e4.cache_info().misses == 1, "the fused layer did not run"
    group = temp_bytes(GroupConv2D(8, 5, group="p4"))
    assert fused < 1.45 * group, (fused, group)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's CPU allocator")
def test_tensorflow_fused_layer_step_peak_near_a_group_convolution(monkeypatch):
    """The allocator's peak of a graph-mode gradient step of a 1×1 stem → E4Conv2D (8 fields,
    32 px, batch 8, k 5: four bands of 8 rows) against the same step with a GroupConv2D 5×5:
    measured 7.4–8.3 against 3.0 MB (2.5–2.8×, three runs: the executor's order varies).
    A band's backward pass makes its padded kernels once the kernels' cotangent is spent, no
    band holds a padded copy of the whole image, and an image has at least four bands; before
    (two bands of 20 rows) 18.6–19.3 MB (6.2–6.4×); with the padded kernels made beside the
    kernels' cotangent 9.8–11.5 MB (3.3–3.8×); with x padded whole 8.4–10.3 MB (2.8–3.4×)."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    x = tf.constant(np.random.default_rng(0).standard_normal((8, 32, 32, 32)), tf.float32)

    def peak(layer):
        inputs = keras.Input((32, 32, 32))
        model = keras.Model(inputs, layer(keras.layers.Conv2D(32, 1)(inputs)))
        return harness.kept_for_backward_bytes(model, x)

    calls = _count_fused_layer(monkeypatch)
    fused = peak(E4Conv2D(8, 5, reduction_ratio=1, slices=2))
    assert calls == [8], calls
    group = peak(GroupConv2D(8, 5, group="p4"))
    assert fused < 3.5 * group, (fused, group)


@pytest.mark.skipif(not _torch_on_cpu(), reason="torch's fused E4 layer is a CPU path")
def test_torch_fused_layer_step_peak_is_below_the_step_by_step_path(monkeypatch):
    """The most bytes live at once in a training step of a 1×1 stem → E4Conv2D (8 fields,
    32 px, batch 2: four bands of 8 rows) is far below the step-by-step path's: measured 2.38
    against 6.10 MB. Each band's tensors are freed before the next band makes its own; when the
    last band's were kept until then (a loop's variables), the fused peak was 3.57 MB."""
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((2, 32, 32, 32)).astype("float32"))

    def peak():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((32, 32, 32))
        hidden = keras.layers.Conv2D(32, 1)(inputs)
        model = keras.Model(inputs, E4Conv2D(8, 5, reduction_ratio=1, slices=2)(hidden))
        harness.torch_step_peak_bytes(model, x)  # a first step: weights' gradients allocated
        return harness.torch_step_peak_bytes(model, x)

    calls = _count_fused_layer(monkeypatch)
    fused = peak()
    assert calls and set(calls) == {8}, calls
    _without_fused_layer(monkeypatch)
    stepwise = peak()
    assert fused < 0.5 * stepwise, (fused, stepwise)


@pytest.mark.skipif(not _torch_on_cpu(), reason="torch's fused E4 layer is a CPU path")
def test_torch_fused_layer_weight_gradients_without_the_input_gradient():
    """A model's first E4 layer (its input needs no gradient) skips x's gradient in the fused
    backward pass; the weights' gradients stay those computed with it."""
    import torch  # noqa: PLC0415 (torch backend only)

    rng = np.random.default_rng(4)
    shapes = [(2, 7, 6, 6), (6, 8), (2, 1), (2, 1), (9, 9 * 8), (6, 3 * 8)]
    args = [torch.tensor(rng.standard_normal(shape).astype("float32")) for shape in shapes]
    cot = torch.tensor(rng.standard_normal((2, 7, 6, 3, 8)).astype("float32"))
    grads = {}
    for with_x in (False, True):
        inputs = [a.clone().requires_grad_(i > 0 or with_x) for i, a in enumerate(args)]
        out = e4ops.e4_apply(*inputs, 3, 1, 1e-5)
        grads[with_x] = torch.autograd.grad((out * cot).sum(), inputs[1:])
    for got, want in zip(grads[False], grads[True]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_recompute_differentiates_the_weights_a_stateless_call_passes():
    """`stateless_call` with weights other than the stored ones: the gradients with
    `recompute=True` equal those without (the rerun reads the passed weights; a torch
    checkpoint of the bare layer reran it with the stored ones)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 7, 6, 16)).astype("float32")
    cot = keras.ops.convert_to_tensor(rng.standard_normal((2, 7, 6, 16)).astype("float32"))
    passed, grads = None, {}
    for flag in (False, True):
        layer = E4Conv2D(4, 3, reduction_ratio=1, slices=2, recompute=flag)
        layer.build(x.shape)
        _randomize(layer)
        if passed is None:
            passed = [w + rng.standard_normal(w.shape).astype("float32")
                      for w in layer.get_weights()]

        def loss(x_, *weights, layer=layer):
            return keras.ops.sum(layer.stateless_call(list(weights), [], x_)[0] * cot)

        grads[flag] = harness.backend_gradients(loss, [x, *passed])
    for got, want in zip(grads[True], grads[False]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_recompute_runs_the_forward_pass_again_for_the_gradients(monkeypatch):
    """The layer's forward pass runs more often for a gradient with `recompute=True` (the
    rerun) than without, on every backend (the memory tests skip tensorflow)."""
    calls, original = [], E4Conv2D.forward_pass
    monkeypatch.setattr(E4Conv2D, "forward_pass",
                        lambda self, x: calls.append(1) or original(self, x))
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 16)).astype("float32")
    counts = {}
    for flag in (False, True):
        layer = E4Conv2D(4, 3, reduction_ratio=1, slices=2, recompute=flag)
        layer.build(x.shape)
        calls.clear()
        harness.layer_gradients(layer, x, np.ones((2, 6, 6, 16), "float32"))
        counts[flag] = len(calls)
    assert counts[True] > counts[False] >= 1, counts


@pytest.mark.parametrize("rows, cols", [(8, 8), (11, 7), (1, 1), (2, 3)])
def test_stride_2_pooling_averages_the_pixels_inside_each_window(rows, cols):
    """The generator's 2×2 stride-2 "same" pooling: each output pixel is the mean of its
    window's pixels inside the image (a window past an odd edge holds fewer)."""
    x = np.random.default_rng(0).standard_normal((2, rows, cols, 3)).astype("float32")
    want = np.stack([np.stack([x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
                               for j in range(-(-cols // 2))], 1) for i in range(-(-rows // 2))], 1)
    got = harness.to_numpy(e4ops.average_pool_2x2_same(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
