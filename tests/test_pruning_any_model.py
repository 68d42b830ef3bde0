"""`callbacks.Pruning` for every kind of prunable layer (the strength and magnitude criteria on
`SynapticConv2D`, `make_prunable` layers, both in one model), score normalization, the
TensorBoard scalars, and models nested in models (every `graph.rewrite` user reaches them).

Expected masks are computed here in NumPy from the weights, by the definitions: "strength" keeps
the largest |m·s| (one ranking over all synaptic layers with scope="global"), "magnitude" on a
SynapticConv2D the largest Σ|W| over a connection's k×k kernel, normalization "channel" divides
a score by its output channel's L2 norm and "layer" by the layer's root mean square.
"""

import os

import keras
import numpy as np
import pytest

from keras_convx import callbacks
from keras_convx import export
from keras_convx import graph
from keras_convx import layers as kx
from keras_convx import pruning
from keras_convx.ops.core import to_numpy


def _data(n=32):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, 6, 6, 4)).astype("float32"),
            rng.standard_normal((n, 3)).astype("float32"))


def _synaptic_model(seed, dense_too=False):
    """Two SynapticConv2D with random strengths (so the ranking has no ties), a Dense head; with
    `dense_too` a hidden Dense made prunable by make_prunable as well."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6, 6, 4))
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    if dense_too:
        y = keras.layers.Dense(8, activation="relu", name="hidden")(y)
    model = pruning.make_synaptic(keras.Model(x, keras.layers.Dense(3, name="head")(y)))
    rng = np.random.default_rng(seed)
    for layer in pruning.prunable_layers(model):
        layer.strength.assign(rng.uniform(0.1, 2.0, tuple(layer.strength.shape)))
    if dense_too:
        model = pruning.make_prunable(model, layers=["hidden"])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    return model


def _keep_largest(scores, sparsity):
    """0/1 of the same shape, the round(sparsity·N) smallest scores pruned (stable order)."""
    flat = scores.reshape(-1)
    mask = np.ones(flat.size)
    mask[np.argsort(flat, kind="stable")[:int(round(sparsity * flat.size))]] = 0.0
    return mask.reshape(scores.shape)


ONE_UPDATE = pruning.ConstantSparsity(0.5, begin_step=0, frequency=1000)  # step 0 only


def test_strength_criterion_ranks_all_synaptic_connections_together():
    model = _synaptic_model(0)
    layers = pruning.prunable_layers(model)
    scores = [np.abs(to_numpy(layer.strength)) for layer in layers]
    joint = _keep_largest(np.concatenate([s.reshape(-1) for s in scores]), 0.5)
    expected = np.split(joint, np.cumsum([s.size for s in scores])[:-1])
    x, y = _data()
    cb = callbacks.Pruning(ONE_UPDATE, criterion="strength", scope="global")
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    for layer, mask, s in zip(layers, expected, scores):
        np.testing.assert_array_equal(to_numpy(layer.mask), mask.reshape(s.shape))
    assert abs(history.history["sparsity"][-1] - 0.5) < 0.02
    # SynapticPruning is this callback with its defaults: the same run, the same masks.
    again = _synaptic_model(0)
    again.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[callbacks.SynapticPruning(ONE_UPDATE)])
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


def test_magnitude_criterion_prunes_synaptic_connections_by_kernel_l1_per_layer():
    model = _synaptic_model(1)
    layers = pruning.prunable_layers(model)
    expected = [_keep_largest(np.abs(to_numpy(layer.kernel)).sum(axis=(0, 1)), 0.5)
                for layer in layers]
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[callbacks.Pruning(ONE_UPDATE, scope="layer")])
    for layer, mask in zip(layers, expected):
        np.testing.assert_array_equal(to_numpy(layer.mask), mask)


def test_a_model_with_both_kinds_is_pruned_whole_and_strength_names_what_it_cannot_score():
    model = _synaptic_model(2, dense_too=True)
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=[callbacks.Pruning(ONE_UPDATE)])
    logs = history.history
    for name in ("c1", "c2", "hidden"):
        assert abs(logs[f"sparsity/{name}"][-1] - 0.5) < 0.05, name
    hidden = model.get_layer("hidden")
    sizes = {"c1": 3 * 3 * 4 * 6, "c2": 3 * 3 * 6 * 8, "hidden": 8 * 8}  # (bias not pruned)
    pruned = {"c1": (1 - to_numpy(model.get_layer("c1").mask)).sum() * 9,
              "c2": (1 - to_numpy(model.get_layer("c2").mask)).sum() * 9,
              "hidden": sum(np.sum(to_numpy(m) == 0)
                            for m in hidden.pruning_masks.values())}
    assert logs["sparsity"][-1] == pytest.approx(sum(pruned.values()) / sum(sizes.values()))
    assert pruning.sparsity(model)["total"] == pytest.approx(logs["sparsity"][-1])
    with pytest.raises(ValueError, match=r"make_prunable layers \['hidden'\] have none"):
        model.fit(x, y, verbose=0, callbacks=[callbacks.Pruning(ONE_UPDATE, "strength")])
    # Refused when training starts, not at the first update: a criterion of one kind only.
    with pytest.raises(ValueError, match="kernel_l1"):
        model.fit(x, y, verbose=0, callbacks=[callbacks.Pruning(ONE_UPDATE, "KERNEL_L1")])
    with pytest.raises(ValueError, match="callable criterion scores one kind"):
        model.fit(x, y, verbose=0, callbacks=[
            callbacks.Pruning(ONE_UPDATE, lambda layer, *rest: np.ones(1))])
    # SynapticPruning leaves the make_prunable layers to Pruning.
    fresh = _synaptic_model(2, dense_too=True)
    fresh.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[callbacks.SynapticPruning(ONE_UPDATE)])
    assert all(np.all(to_numpy(m) == 1)
               for m in fresh.get_layer("hidden").pruning_masks.values())


def _two_dense(scale):
    keras.utils.set_random_seed(5)
    x = keras.Input((6,))
    y = keras.layers.Dense(8, name="a")(x)
    model = pruning.make_prunable(keras.Model(x, keras.layers.Dense(4, name="b")(y)),
                                  granularity="weight")
    b = model.get_layer("b")
    b.pruned_variable("kernel").assign(to_numpy(b.pruned_variable("kernel")) * scale)
    return model


def _kernel_scores(model, name):
    """|W| of a Dense (weight granularity prunes the kernel only)."""
    layer = model.get_layer(name)
    assert list(layer.pruning_masks) == ["_kernel"]
    return np.abs(to_numpy(layer.pruned_variable("_kernel")))


def _kernel_mask(model, name):
    return to_numpy(model.get_layer(name).pruning_masks["_kernel"])


def test_channel_normalization_ranks_each_weight_by_its_share_of_its_output_channel():
    model = _two_dense(1.0)
    kernel = _kernel_scores(model, "a")
    share = kernel / np.sqrt((kernel**2).sum(axis=0, keepdims=True))
    pruning.update_masks(model, 0.5, layers=[model.get_layer("a")], normalization="channel")
    np.testing.assert_array_equal(_kernel_mask(model, "a"), _keep_largest(share, 0.5))
    assert not np.array_equal(_keep_largest(share, 0.5), _keep_largest(kernel, 0.5))


def test_layer_normalization_lets_a_global_ranking_compare_layers_of_any_scale():
    raw = _two_dense(1e-3)
    pruning.update_masks(raw, 0.5, scope="global")
    assert pruning.sparsity_report(raw)["b"] > 0.95  # the tiny layer is emptied
    model = _two_dense(1e-3)
    scores = [_kernel_scores(model, n).reshape(-1) for n in "ab"]
    scaled = [s / np.sqrt(np.mean(s**2)) for s in scores]
    joint = _keep_largest(np.concatenate(scaled), 0.5)
    pruning.update_masks(model, 0.5, scope="global", normalization="layer")
    for name, piece in zip("ab", np.split(joint, [scores[0].size])):
        np.testing.assert_array_equal(_kernel_mask(model, name).reshape(-1), piece)


def test_bad_normalization_is_refused_before_any_change():
    model = _two_dense(1.0)
    channel = pruning.make_prunable(_hidden_channel_model(), granularity="channel")
    with pytest.raises(ValueError, match=r"normalization to be one of \[None, 'channel'"):
        pruning.update_masks(model, 0.5, normalization="unit")
    with pytest.raises(ValueError, match=r"layers \['h'\] prune whole channels"):
        pruning.update_masks(channel, 0.5, normalization="channel")
    with pytest.raises(ValueError, match="normalization"):
        callbacks.Pruning(ONE_UPDATE, normalization="unit")
    for layer in pruning.masked_layers(model) + pruning.masked_layers(channel):
        assert all(np.all(to_numpy(m) == 1) for m in layer.pruning_masks.values())


def _hidden_channel_model():
    x = keras.Input((6,))
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4, name="h")(x)))


def test_sparsity_reaches_tensorboard_as_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    model = _synaptic_model(3, dense_too=True)
    x, y = _data()
    schedule = pruning.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=4, frequency=2)
    log_dir = str(tmp_path / "logs")
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[
        callbacks.Pruning(schedule), keras.callbacks.TensorBoard(log_dir)])
    events = EventAccumulator(os.path.join(log_dir, "train"), size_guidance={"tensors": 0})
    events.Reload()
    for name in ("sparsity", "sparsity/c1", "sparsity/c2", "sparsity/hidden"):
        written = [float(make_ndarray(e.tensor_proto)) for e in events.Tensors(f"epoch_{name}")]
        np.testing.assert_allclose(written, history.history[name], rtol=1e-6)
    assert history.history["sparsity"][-1] > 0.5


# -- nested models ------------------------------------------------------------------------------


def _nested(data_format="channels_last"):
    keras.utils.set_random_seed(7)
    kw = dict(padding="same", data_format=data_format)
    block = keras.Sequential([
        keras.layers.Conv2D(8, 3, activation="relu", name="inner_a", **kw),
        kx.LogPolarConv2D(8, 5, rings=2, sectors=4, growth_rate=2.0, name="inner_lp", **kw),
        keras.layers.Conv2D(8, 3, name="inner_b", **kw)], name="block")
    shape = (6, 6, 4) if data_format == "channels_last" else (4, 6, 6)
    x = keras.Input(shape)
    y = block(keras.layers.Conv2D(4, 3, name="stem", **kw)(x))
    y = keras.layers.GlobalAveragePooling2D(data_format=data_format)(y)
    return keras.Model(x, keras.layers.Dense(3, name="head")(y))


def _inputs(data_format="channels_last"):
    x, _ = _data(4)
    return x if data_format == "channels_last" else np.moveaxis(x, -1, 1)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_layers_inside_a_nested_model_are_made_prunable_saved_and_stripped(data_format,
                                                                          tmp_path):
    model = _nested(data_format)
    model.get_layer("block").trainable = False  # a frozen nested model stays frozen
    x = _inputs(data_format)
    prunable = pruning.make_prunable(model)
    assert prunable.get_layer("block").trainable is False
    names = {layer.name for layer in pruning.masked_layers(prunable)}
    assert names == {"stem", "inner_a", "inner_lp", "inner_b", "head"}
    np.testing.assert_array_equal(to_numpy(prunable(x)), to_numpy(model(x)))
    report = pruning.update_masks(prunable, 0.5)
    assert all(abs(report[n] - 0.5) < 0.05 for n in names)
    path = str(tmp_path / "nested.keras")
    prunable.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(pruning.masked_layers(prunable), pruning.masked_layers(loaded)):
        for name in a.pruning_masks:
            np.testing.assert_array_equal(to_numpy(a.pruning_masks[name]),
                                          to_numpy(b.pruning_masks[name]))
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(prunable(x)))
    plain = pruning.strip(prunable)
    assert not pruning.masked_layers(plain)
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(prunable(x)), atol=1e-6)
    small = pruning.compact(prunable)  # the nested block is opaque: exact, channels kept
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(prunable(x)), atol=1e-5)


def test_make_synaptic_and_fold_reach_into_nested_models():
    model = _nested()
    x = _inputs()
    synaptic = pruning.make_synaptic(model)
    assert {layer.name for layer in pruning.prunable_layers(synaptic)} == {
        "stem", "inner_a", "inner_b"}
    np.testing.assert_allclose(to_numpy(synaptic(x)), to_numpy(model(x)), atol=1e-5)
    folded = export.fold(model)
    assert not any(isinstance(layer, kx.LogPolarConv2D) for layer in graph.all_layers(folded))
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), atol=1e-5)
