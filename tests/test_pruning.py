"""keras_convx.pruning and callbacks.SynapticPruning: schedules, masks, resume, strip, compact."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_convx import callbacks
from keras_convx import pruning
from keras_convx.layers import SynapticConv2D
from tests import harness

BACKEND = keras.backend.backend()


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _small_cnn(seed=1, compile_model=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = SynapticConv2D(8, 3, padding="same", name="s1")(inputs)
    h = keras.layers.BatchNormalization(scale=False, name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = SynapticConv2D(8, 3, padding="same", name="s2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    if compile_model:
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=48):
    return _rand(n, 8, 8, 3, seed=5), np.random.default_rng(6).integers(0, 3, n)


# -- schedules ---------------------------------------------------------------------------------


def test_constant_sparsity_values():
    s = pruning.ConstantSparsity(0.75, begin_step=10, end_step=30, frequency=10)
    assert [s.should_prune(t) for t in (0, 9, 10, 15, 20, 30, 40)] == [
        False, False, True, False, True, True, False]
    assert s(20) == (True, 0.75) and s(21) == (False, 0.75)
    forever = pruning.ConstantSparsity(0.5, frequency=3)
    assert forever.should_prune(3000) and not forever.should_prune(3001)


def test_polynomial_decay_values():
    s = pruning.PolynomialDecay(0.2, 0.8, begin_step=100, end_step=300, power=3, frequency=50)
    # hand-computed: 0.8 + (0.2 - 0.8) · (1 - p)^3
    expected = {0: 0.2, 100: 0.2, 150: 0.8 - 0.6 * 0.75**3, 200: 0.8 - 0.6 * 0.125,
                300: 0.8, 500: 0.8}
    for step, value in expected.items():
        assert s.sparsity_at(step) == pytest.approx(value)
    assert [s.should_prune(t) for t in (50, 100, 125, 150, 300, 350)] == [
        False, True, False, True, True, False]
    linear = pruning.PolynomialDecay(0.0, 0.5, 0, 10, power=1)
    assert linear.sparsity_at(4) == pytest.approx(0.2)


@pytest.mark.parametrize("schedule", [pruning.ConstantSparsity(0.6, 5, 50, 5),
                                      pruning.PolynomialDecay(0.1, 0.9, 0, 100, 2, 10)])
def test_schedule_serialization(schedule):
    clone = type(schedule).from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(revived) is type(schedule) and revived.get_config() == schedule.get_config()
    assert pruning.get_schedule(keras.saving.serialize_keras_object(schedule)).get_config() == (
        schedule.get_config())
    short = {"class_name": "constant_sparsity", "config": {"target_sparsity": 0.3}}
    assert pruning.get_schedule(short).target_sparsity == 0.3


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: pruning.ConstantSparsity(1.0), ValueError, "target_sparsity"),
        (lambda: pruning.ConstantSparsity(-0.1), ValueError, "target_sparsity"),
        (lambda: pruning.ConstantSparsity("0.5"), TypeError, "target_sparsity"),
        (lambda: pruning.ConstantSparsity(0.5, frequency=0), ValueError, "frequency"),
        (lambda: pruning.ConstantSparsity(0.5, begin_step=10, end_step=5), ValueError, "end_step"),
        (lambda: pruning.PolynomialDecay(0.0, 1.2, 0, 10), ValueError, "final_sparsity"),
        (lambda: pruning.PolynomialDecay(0.0, 0.5, 10, 10), ValueError, "end_step"),
        (lambda: pruning.PolynomialDecay(0.0, 0.5, 0, 10, power=0), ValueError, "power"),
        (lambda: pruning.get_schedule("cosine"), ValueError, "constant_sparsity"),
        (lambda: pruning.get_schedule({"class_name": "cosine", "config": {}}), ValueError,
         "polynomial_decay"),
    ],
)
def test_schedule_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- one-shot pruning ---------------------------------------------------------------------------


def _layer_with_strengths(strength, name):
    layer = SynapticConv2D(strength.shape[1], 1, name=name, strength_regularizer=None)
    layer.build((None, 4, 4, strength.shape[0]))
    layer.strength.assign(strength.astype("float32"))
    return layer


def test_prune_global_and_per_layer_by_hand():
    a = _layer_with_strengths(np.array([[0.1, -2.0], [0.5, 0.05]]), "a")
    b = _layer_with_strengths(np.array([[3.0, 0.2], [-0.3, 1.0]]), "b")
    report = pruning.prune(a, 0.5, layers=[a, b])  # global: the 4 smallest |s| of 8
    np.testing.assert_array_equal(_np(a.mask), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(_np(b.mask), [[1, 0], [0, 1]])
    assert report["a"] == 0.5
    a2 = _layer_with_strengths(np.array([[0.1, -2.0], [0.5, 0.05]]), "a2")
    b2 = _layer_with_strengths(np.array([[3.0, 0.2], [-0.3, 1.0]]), "b2")
    for layer in (a2, b2):
        pruning.prune(layer, 0.75, scope="layer")
    np.testing.assert_array_equal(_np(a2.mask), [[0, 1], [0, 0]])
    np.testing.assert_array_equal(_np(b2.mask), [[1, 0], [0, 0]])


def test_channel_normalization_keeps_a_small_scale_layer_alive():
    big = _layer_with_strengths(np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 1.5]]), "big")
    small = _layer_with_strengths(np.array([[0.01, 0.04], [0.02, 0.01]]), "small")
    pruning.prune(big, 0.4, layers=[big, small])  # raw: the small layer is emptied
    assert np.all(_np(small.mask) == 0)
    big = _layer_with_strengths(np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 1.5]]), "big2")
    small = _layer_with_strengths(np.array([[0.01, 0.04], [0.02, 0.01]]), "small2")
    pruning.prune(big, 0.4, layers=[big, small], normalization="channel")
    # per output channel the scores become |s| / ‖s of the channel‖₂; hand-computed:
    # big:   [[0.312, 0.424], [0.937, 0.848], [0.156, 0.318]]; small: [[0.447, 0.970],
    # [0.894, 0.243]] → the 4 smallest of 10: 0.156, 0.243, 0.312, 0.318
    np.testing.assert_array_equal(_np(big.mask), [[0, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(_np(small.mask), [[1, 1], [1, 0]])
    single = _layer_with_strengths(np.array([[1e-3, 5.0]]), "single")  # one input channel
    other = _layer_with_strengths(np.array([[1.0, 0.1], [0.2, 2.0]]), "other")
    pruning.prune(single, 0.5, layers=[single, other], normalization="channel")
    np.testing.assert_array_equal(_np(single.mask), [[1, 1]])  # a channel's only input: 1.0
    with pytest.raises(ValueError, match="normalization"):
        pruning.prune(big, 0.4, normalization="global")


def test_layer_normalization_by_hand():
    big = _layer_with_strengths(np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 1.5]]), "big_l")
    small = _layer_with_strengths(np.array([[0.01, 0.04], [0.02, 0.01]]), "small_l")
    pruning.prune(big, 0.4, layers=[big, small], normalization="layer")
    # each layer's scores divided by their root mean square, by hand: big rms = √(32.5/6) =
    # 2.3274 → [[0.430, 0.859], [1.289, 1.719], [0.215, 0.645]]; small rms = √(5.5e-4) =
    # 0.023452 → [[0.426, 1.706], [0.853, 0.426]]; the 4 smallest of 10: 0.215, 0.426,
    # 0.426, 0.430 (raw scores would empty the small layer, see the test above)
    np.testing.assert_array_equal(_np(big.mask), [[0, 1], [1, 1], [0, 1]])
    np.testing.assert_array_equal(_np(small.mask), [[0, 1], [1, 0]])


def test_callable_criterion_ranks_by_its_scores():
    a = _layer_with_strengths(np.array([[0.1, -2.0], [0.5, 0.05]]), "ca")
    b = _layer_with_strengths(np.array([[3.0, 0.2], [-0.3, 1.0]]), "cb")
    a.set_mask(np.array([[1, 1], [0, 1]], "float32"))  # one connection already pruned
    seen = []

    def reversed_strength(layer):  # prefers the WEAK connections: the opposite of "strength"
        seen.append(layer.name)
        return 10.0 - np.abs(_np(layer.strength))

    report = pruning.prune(a, 0.5, layers=[a, b], criterion=reversed_strength)
    assert seen == ["ca", "cb"]
    # scores: a [[9.9, 8.0], [(pruned) 0, 9.95]], b [[7.0, 9.8], [9.7, 9.0]]; the pruned one
    # plus the 3 lowest others (7.0, 8.0, 9.0) go
    np.testing.assert_array_equal(_np(a.mask), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(_np(b.mask), [[0, 1], [1, 0]])
    assert report["total"] == 0.5
    with pytest.raises(ValueError, match="criterion returned shape"):
        pruning.prune(a, 0.5, criterion=lambda layer: np.ones((3, 3)))


def test_prune_is_monotone_and_counts_exactly():
    model = _small_cnn()
    first = pruning.prune(model, 0.6)
    masks = {l.name: _np(l.mask) for l in pruning.prunable_layers(model)}
    n = sum(m.size for m in masks.values())
    assert first["total"] == pytest.approx(round(0.6 * n) / n)
    pruning.prune(model, 0.3)  # lower target: nothing comes back
    for layer in pruning.prunable_layers(model):
        assert np.all(_np(layer.mask)[masks[layer.name] == 0] == 0)


def test_kernel_l1_criterion_differs_from_strength():
    layer = _layer_with_strengths(np.ones((1, 2)), "l1")
    layer.kernel_size  # 1×1: make the slices differ in L1 but not in L2 with a 3×3 kernel
    wide = SynapticConv2D(2, 3, strength_regularizer=None, name="wide")
    wide.build((None, 6, 6, 1))
    direction = np.zeros((3, 3, 1, 2), "float32")
    direction[0, 0, 0, 0] = 1.0  # concentrated: L1 = L2 = s
    direction[:, :, 0, 1] = 1.0 / 3.0  # spread: L2 = s, L1 = 3 s
    wide.direction.assign(direction)
    wide.strength.assign(np.array([[1.5, 1.0]], "float32"))
    np.testing.assert_allclose(pruning.importance(wide, "strength"), [[1.5, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(pruning.importance(wide, "kernel_l1"), [[1.5, 3.0]], rtol=1e-5)
    pruning.prune(wide, 0.5, criterion="kernel_l1")
    np.testing.assert_array_equal(_np(wide.mask), [[0, 1]])


def test_prune_bad_arguments():
    model = _small_cnn(compile_model=False)
    with pytest.raises(ValueError, match="sparsity"):
        pruning.prune(model, 1.0)
    with pytest.raises(ValueError, match="scope"):
        pruning.prune(model, 0.5, scope="channel")
    with pytest.raises(ValueError, match="criterion"):
        pruning.prune(model, 0.5, criterion="taylor")
    plain = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="SynapticConv2D"):
        pruning.prune(plain, 0.5)
    with pytest.raises(ValueError, match="subclassed|Functional"):
        pruning.strip(keras.layers.Dense(2))


# -- callback -------------------------------------------------------------------------------


def test_callback_prunes_on_schedule_and_logs():
    model = _small_cnn()
    x, y = _data()
    schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=2, end_step=10, frequency=4)
    cb = callbacks.SynapticPruning(schedule)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb], shuffle=False)
    assert [u[0] for u in cb.updates] == [2, 6, 10]  # end_step inclusive
    assert cb.updates[-1][2] == pytest.approx(0.8, abs=0.01)
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    assert set(history.history) >= {"sparsity/s1", "sparsity/s2", "loss"}
    for layer in pruning.prunable_layers(model):
        mask = _np(layer.mask)
        assert np.all(_np(layer.kernel)[:, :, mask == 0] == 0)


def test_verbose_callback_prints_on_its_own_line(capsys):
    model = _small_cnn()
    x, y = _data()
    schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=2, end_step=10, frequency=4)
    cb = callbacks.SynapticPruning(schedule, verbose=1)
    model.fit(x, y, batch_size=8, epochs=2, verbose=1, callbacks=[cb], shuffle=False)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "SynapticPruning" in line]
    assert len(lines) == len(cb.updates) >= 2
    # each message starts its own line: never appended to the progress bar's text
    assert all(line.startswith("SynapticPruning: step") for line in lines), lines


def test_callback_needs_a_prunable_layer():
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 3),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    cb = callbacks.SynapticPruning(pruning.ConstantSparsity(0.5))
    with pytest.raises(ValueError, match="SynapticConv2D"):
        model.fit(np.zeros((4, 4, 4, 2)), np.zeros((4, 2)), verbose=0, callbacks=[cb])
    with pytest.raises(ValueError, match="scope"):
        callbacks.SynapticPruning(pruning.ConstantSparsity(0.5), scope="net")
    with pytest.raises(ValueError, match="schedule"):
        callbacks.SynapticPruning(0.5)


@pytest.mark.parametrize("interrupt_epoch, next_update", [(1, 8), (2, 12)])
def test_resume_with_backup_and_restore_equals_uninterrupted(interrupt_epoch, next_update):
    """Interrupted at an update step (epoch 2 = step 12) or between two (epoch 1 = step 6,
    updates at 4 and 8): the resumed run's masks AND weights equal the uninterrupted run's
    (a deterministic CPU run: tight tolerance, not 1e-4)."""
    x, y = _data()
    schedule = pruning.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=16, frequency=4)
    fit_kwargs = dict(batch_size=8, epochs=4, verbose=0, shuffle=False)

    full = _small_cnn(seed=3)
    full.fit(x, y, callbacks=[callbacks.SynapticPruning(schedule)], **fit_kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        backup = os.path.join(tmp, "backup")
        first = _small_cnn(seed=3)
        with pytest.raises(RuntimeError, match="interrupted"):
            first.fit(x, y, callbacks=[callbacks.SynapticPruning(schedule),
                                       keras.callbacks.BackupAndRestore(backup),
                                       harness.InterruptAtEpoch(interrupt_epoch)], **fit_kwargs)
        resumed = _small_cnn(seed=4)  # different init: everything must come from the backup
        cb = callbacks.SynapticPruning(schedule)
        resumed.fit(x, y, callbacks=[cb, keras.callbacks.BackupAndRestore(backup)],
                    **fit_kwargs)
    assert cb.updates[0][0] == next_update  # the schedule continued from the backup's step
    for a, b in zip(pruning.prunable_layers(full), pruning.prunable_layers(resumed)):
        np.testing.assert_array_equal(_np(a.mask), _np(b.mask))
    for a, b in zip(full.weights, resumed.weights):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_masks_and_step_survive_keras_save_load():
    model = _small_cnn()
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    pruning.prune(model, 0.65)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pruned.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    for a, b in zip(pruning.prunable_layers(model), pruning.prunable_layers(loaded)):
        np.testing.assert_array_equal(_np(a.mask), _np(b.mask))
    assert int(_np(loaded.optimizer.iterations)) == int(_np(model.optimizer.iterations)) == 6
    np.testing.assert_allclose(_np(loaded(x[:4])), _np(model(x[:4])), rtol=1e-5, atol=1e-6)


def test_schedule_continues_from_a_model_checkpoint():
    model = _small_cnn()
    x, y = _data()
    schedule = pruning.ConstantSparsity(0.5, begin_step=0, frequency=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.keras")
        first = callbacks.SynapticPruning(schedule)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[first, keras.callbacks.ModelCheckpoint(path)])
        restored = keras.models.load_model(path)
    resumed = callbacks.SynapticPruning(schedule)
    restored.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[resumed])
    assert [u[0] for u in first.updates] == [0, 4]
    assert [u[0] for u in resumed.updates] == [8]  # steps 6..11: the next update step is 8
    assert resumed.updates[0][2] == pytest.approx(0.5, abs=0.01)


# -- strip, make_synaptic, compact ----------------------------------------------------------------


def _image(shape, data_format):
    """An image shape/batch given channels_last, in `data_format`."""
    return shape if data_format == "channels_last" else (shape[-1], *shape[:-1])


def _batch(x, data_format):
    return x if data_format == "channels_last" else np.ascontiguousarray(np.moveaxis(x, -1, 1))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_make_synaptic_then_strip_round_trip(data_format):
    keras.utils.set_random_seed(0)
    axis = -1 if data_format == "channels_last" else 1
    inputs = keras.Input(_image((9, 9, 3), data_format))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1",
                            data_format=data_format)(inputs)
    h = keras.layers.BatchNormalization(axis=axis, name="bn")(h)
    h = keras.layers.Conv2D(4, 3, strides=2, name="c2", data_format=data_format)(h)
    model = keras.Model(inputs, keras.layers.Flatten()(h))
    x = _batch(_rand(2, 9, 9, 3), data_format)
    synaptic = pruning.make_synaptic(model)
    kinds = [type(l).__name__ for l in synaptic.layers]
    assert kinds.count("SynapticConv2D") == 2 and "Conv2D" not in kinds
    assert all(l.data_format == data_format for l in pruning.prunable_layers(synaptic))
    np.testing.assert_allclose(_np(synaptic(x)), _np(model(x)), rtol=1e-5, atol=1e-6)
    pruning.prune(synaptic, 0.5)
    y = _np(synaptic(x))
    stripped = pruning.strip(synaptic)
    assert [type(l).__name__ for l in stripped.layers].count("Conv2D") == 2
    assert not pruning.prunable_layers(stripped)
    np.testing.assert_allclose(_np(stripped(x)), y, rtol=1e-6, atol=1e-6)
    only = pruning.make_synaptic(model, layers=["c2"])
    assert [type(l).__name__ for l in only.layers].count("SynapticConv2D") == 1


def _graph_model(rng, data_format="channels_last"):
    """Conv → BN → ReLU feeding a 1×1 conv and a 3×3 conv (Add), a valid conv and a
    Concatenate, pooling and a Dense head: every rule of compact in one graph."""
    df, axis = data_format, (-1 if data_format == "channels_last" else 1)
    inputs = keras.Input(_image((10, 10, 4), df))
    a = SynapticConv2D(8, 3, padding="same", name="a", data_format=df)(inputs)
    a = keras.layers.ReLU()(keras.layers.BatchNormalization(axis=axis, name="bn_a")(a))
    b = SynapticConv2D(8, 1, name="b", data_format=df)(a)
    c = SynapticConv2D(8, 3, padding="same", name="c", data_format=df)(a)
    s = keras.layers.BatchNormalization(axis=axis, name="bn_s")(keras.layers.Add()([b, c]))
    d = SynapticConv2D(6, 3, name="d", data_format=df)(s)
    e = SynapticConv2D(5, 3, name="e", data_format=df)(s)
    h = keras.layers.MaxPooling2D(data_format=df)(keras.layers.Concatenate(axis=axis)([d, e]))
    pooled = keras.layers.GlobalAveragePooling2D(data_format=df)(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        if isinstance(layer, SynapticConv2D):
            layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    return model


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_compact_functional_graph_identical_outputs_fewer_parameters(data_format):
    rng = np.random.default_rng(0)
    model = _graph_model(rng, data_format)
    a = model.get_layer("a")
    mask = np.ones(a.mask.shape, "float32")
    mask[:, [1, 5]] = 0  # two dead output channels: constants through BN and ReLU ...
    a.set_mask(mask)
    bias = _np(a.bias)
    bias[[1, 5]] = -50.0  # ... that the ReLU turns into exact zeros
    a.bias.assign(bias.astype("float32"))
    pruning.prune(model, 0.8)
    x = _batch(_rand(3, 10, 10, 4), data_format)
    y = _np(model(x))
    small, report = pruning.compact(model, return_report=True)
    np.testing.assert_allclose(_np(small(x)), y, rtol=1e-5, atol=1e-5)
    assert report["params_after"] < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    assert report["params_after"] == small.count_params()
    kept = report["conv_channels_kept"]
    assert kept["a"][1] <= 6  # the dead outputs of "a" are gone (constants folded into "b")
    assert kept["b"][1] == kept["c"][1]  # Add keeps its inputs aligned
    assert not pruning.prunable_layers(small)


def test_compact_folds_a_constant_channel_into_a_1x1_consumer():
    inputs = keras.Input((6, 6, 2))
    a = SynapticConv2D(3, 3, padding="same", name="a", bias_initializer="ones")(inputs)
    a = keras.layers.BatchNormalization(name="bn")(a)
    out = SynapticConv2D(2, 1, name="b", use_bias=False)(a)
    model = keras.Model(inputs, out)
    mask = np.ones((2, 3), "float32")
    mask[:, 2] = 0  # output 2 of "a" is the constant BN(1) ≠ 0
    model.get_layer("a").set_mask(mask)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.array([0.1, 0.2, -0.3], "float32"))
    small, report = pruning.compact(model, return_report=True)
    assert report["conv_channels_kept"] == {"a": (2, 2), "b": (2, 2)}
    assert small.get_layer("b").use_bias  # the constant's contribution became a bias
    x = _rand(2, 6, 6, 2)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-5, atol=1e-6)


def test_compact_keeps_what_it_cannot_fold():
    """A dead channel feeding a 3×3 "same" conv is constant except at the border: kept."""
    inputs = keras.Input((6, 6, 2))
    a = SynapticConv2D(3, 1, name="a", bias_initializer="ones")(inputs)
    out = SynapticConv2D(2, 3, padding="same", name="b")(a)
    model = keras.Model(inputs, out)
    mask = np.ones((2, 3), "float32")
    mask[:, 0] = 0
    model.get_layer("a").set_mask(mask)
    small, report = pruning.compact(model, return_report=True)
    assert report["conv_channels_kept"]["a"] == (2, 3)
    x = _rand(2, 6, 6, 2)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-5, atol=1e-6)


def test_compact_sequential_and_report():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        SynapticConv2D(8, 3, padding="same", name="s1"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        SynapticConv2D(8, 3, name="s2"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    s1 = model.get_layer("s1")
    rows = np.ones(s1.mask.shape, "float32")
    s2 = model.get_layer("s2")
    dead_inputs = np.ones(s2.mask.shape, "float32")
    dead_inputs[[0, 3, 4], :] = 0  # s2 never reads channels 0, 3, 4 of s1
    s2.set_mask(dead_inputs)
    s1.set_mask(rows)
    x = _rand(2, 8, 8, 3)
    small, report = pruning.compact(model, return_report=True)
    assert isinstance(small, keras.Sequential)
    assert report["conv_channels_kept"] == {"s1": (3, 5), "s2": (5, 8)}
    expected_macs = 8 * 8 * 9 * 3 * 5 + 6 * 6 * 9 * 5 * 8 + 6 * 6 * 8 * 2
    assert report["macs_after"] == expected_macs
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-5, atol=1e-6)


def test_compact_rejects_subclassed_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = SynapticConv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 5, 5, 2), "float32"))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        pruning.compact(net)


def _plain_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    h = keras.layers.Conv2D(8, 3, name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def _layers_argument_cases():
    """(function of `layers` → the names it acted on, the names it may act on) of every
    public function taking a `layers` subset."""
    def synaptic(layers):
        model = pruning.make_synaptic(_plain_cnn(), layers=layers)
        return sorted(l.name for l in pruning.prunable_layers(model))

    def prunable(layers):
        model = pruning.make_prunable(_plain_cnn(), layers=layers)
        return sorted(l.name for l in pruning.masked_layers(model))

    def update_masks(layers):
        model = pruning.make_prunable(_plain_cnn())
        report = pruning.update_masks(model, 0.5, layers=layers)
        return sorted(name for name, value in report.items() if name != "total" and value > 0)

    def prune(layers):
        model = pruning.make_synaptic(_plain_cnn())
        report = pruning.prune(model, 0.5, scope="layer", layers=layers)
        return sorted(name for name, value in report.items() if name != "total" and value > 0)

    return {"make_synaptic": (synaptic, ["c1", "c2"]), "make_prunable": (prunable, ["c1", "c2", "head"]),
            "update_masks": (update_masks, ["c1", "c2", "head"]), "prune": (prune, ["c1", "c2"])}


@pytest.mark.parametrize("function", ["make_synaptic", "make_prunable", "update_masks", "prune"])
def test_layers_argument_takes_names_and_refuses_unknown_ones(function):
    """`layers=` of every pruning function: one name acts on that layer alone (make_synaptic
    used to read "c2" as the set of its characters and convert nothing), a list on its
    members, a name the model lacks (or of a layer the function cannot act on) is a
    ValueError naming it, another kind of value a TypeError (update_masks and prune used to
    fail on a name with an AttributeError)."""
    run, candidates = _layers_argument_cases()[function]
    assert run("c2") == ["c2"]
    assert run(["c1", "c2"]) == ["c1", "c2"]
    assert run(None) == candidates
    with pytest.raises(ValueError, match="'c3'"):
        run(["c1", "c3"])
    if "pool" not in candidates:
        with pytest.raises(ValueError, match="'pool'"):
            run("pool")
    with pytest.raises(TypeError, match="layers"):
        run([3])
