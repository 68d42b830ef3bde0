"""training.PairwiseConsistency: the loss and its gradient against the NumPy oracle, batch-norm
statistics, compile/fit/evaluate/predict, saving, configuration, bad arguments."""

import keras
import numpy as np
import pytest

from keras_convx import analysis
from keras_convx import callbacks
from keras_convx.training import PairwiseConsistency
from tests import harness
from tests.oracles import focus as oracle
from tests.oracles.shared_basis import conv2d
from tests.test_focus import cam_model

SIZE, CHANNELS, FILTERS, CLASSES = 8, 2, 3, 4


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def _classifier(data_format="channels_last", seed=0, batch_norm=False, softmax=False):
    return cam_model(SIZE, CHANNELS, FILTERS, CLASSES, data_format, softmax, seed, batch_norm,
                     dropout=False, scale=0.7)


def _batch(n=4, seed=1):
    return _rand(n, SIZE, SIZE, CHANNELS, seed=seed), np.arange(n) % CLASSES


def _oracle_parts(params, x):
    kernel, bias, dense, dense_bias = params
    features = np.maximum(conv2d(x, kernel, 1, "same") + bias, 0.0)
    return features, features.mean(axis=(1, 2)) @ dense + dense_bias


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _cross_entropy(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


def _oracle_mask(params, x, y, threshold, region):
    features, _ = _oracle_parts(params, x)
    maps = oracle.normalize(oracle.resize(oracle.cam(features, params[2], y), (SIZE, SIZE)))
    return oracle.erase_mask(maps, threshold, region)


def _oracle_loss(params, x, y, mask, *, beta, lam, relevance, top_k, fill):
    """CE(z, y) + β CE(z', y) + λ mean KL_S(p ‖ p'), the erase mask held fixed."""
    _, z = _oracle_parts(params, x)
    _, z_erased = _oracle_parts(params, oracle.erase(x, mask, fill))
    p, q = _softmax(z), _softmax(z_erased)
    relevant = (np.ones_like(p, bool) if relevance == "all"
                else oracle.top_k_relevant(p, y, top_k))
    return (_cross_entropy(z, y) + beta * _cross_entropy(z_erased, y)
            + lam * float(np.mean(oracle.restricted_kl(p, q, relevant))))


def _params(model):
    return [_np(w) for w in model.get_layer("conv").get_weights()
            + model.get_layer("head").get_weights()]


CASES = [
    dict(),
    dict(relevance="all", erase_threshold=0.3, erased_weight=0.5, consistency_weight=2.0),
    dict(top_k=2, region="box", fill=[0.5, -1.0]),
    dict(data_format="channels_first", fill=0.25),
]


@pytest.mark.parametrize("kwargs", CASES, ids=["defaults", "all-0.3", "top2-box-fill",
                                               "channels_first"])
def test_loss_matches_oracle(kwargs):
    data_format = kwargs.get("data_format", "channels_last")
    model = _classifier(data_format)
    wrapper = PairwiseConsistency(model, **kwargs)
    wrapper.compile(keras.optimizers.SGD(0.0),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _batch()
    given = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    loss = wrapper.compute_loss(given, y, wrapper(given, training=True), training=True)
    params = _params(model)
    mask = _oracle_mask(params, x.astype(np.float64), y, wrapper.erase_threshold, wrapper.region)
    assert 0 < mask.mean() < 1
    expected = _oracle_loss(params, x.astype(np.float64), y, mask,
                            beta=wrapper.erased_weight, lam=wrapper.consistency_weight,
                            relevance=wrapper.relevance, top_k=wrapper.top_k,
                            fill=kwargs.get("fill", 0.0))
    assert float(_np(loss)) == pytest.approx(expected, rel=1e-5)
    assert float(_np(wrapper.erased_area_tracker.result())) == pytest.approx(mask.mean(),
                                                                             abs=1e-6)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_gradient_matches_oracle_with_the_erase_mask_held_fixed(data_format):
    """One SGD step with learning rate 1 moves every weight by −∂L/∂θ; the oracle gradient
    is a central difference of the NumPy loss with the erase mask held fixed (the mask is
    computed without gradient). The oracle is channels_last; the model may not be."""
    model = _classifier(data_format)  # channels_first: a mixed model (see cam_model)
    wrapper = PairwiseConsistency(model, top_k=2, data_format=data_format)
    wrapper.compile(keras.optimizers.SGD(1.0),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _batch()
    params = _params(model)
    x64 = x.astype(np.float64)
    mask = _oracle_mask(params, x64, y, 0.5, "mask")
    wrapper.train_on_batch(x if data_format == "channels_last" else x.transpose(0, 3, 1, 2), y)
    step = [after - before for after, before in zip(_params(model), params)]

    def loss(p):
        return _oracle_loss(p, x64, y, mask, beta=1.0, lam=1.0, relevance="top_k", top_k=2,
                            fill=0.0)

    for index, value in enumerate(params):
        numeric = np.zeros_like(value)
        for position in np.ndindex(value.shape):
            shifted = [p.copy() for p in params]
            shifted[index][position] += 1e-6
            up = loss(shifted)
            shifted[index][position] -= 2e-6
            numeric[position] = (up - loss(shifted)) / 2e-6
        np.testing.assert_allclose(-step[index], numeric, rtol=2e-3, atol=2e-5)


def test_erased_pass_leaves_moving_statistics_to_the_clean_batch():
    x, y = _batch(8)
    plain = _classifier(batch_norm=True)
    plain.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped_model = _classifier(batch_norm=True)
    wrapper = PairwiseConsistency(wrapped_model)
    wrapper.compile(keras.optimizers.SGD(0.0),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.train_on_batch(x, y)
    wrapper.train_on_batch(x, y)
    for name in ("moving_mean", "moving_variance"):
        expected = _np(getattr(plain.get_layer("bn"), name))
        got = _np(getattr(wrapped_model.get_layer("bn"), name))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert np.abs(expected - (0.0 if name == "moving_mean" else 1.0)).max() > 1e-3


def _task(n=48, seed=2):
    """Class = quadrant of a bright spot (a learnable toy task)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, SIZE, SIZE, CHANNELS)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 4:r * 4 + 4, col * 4:col * 4 + 4] += 1.0
    return x, y


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(fill="mean", region="box", target="prediction", relevance="all")],
    ids=["defaults", "mean-box-prediction"],
)
def test_trains_with_compile_fit_and_reports_its_terms(kwargs):
    x, y = _task()
    model = _classifier(softmax=True)
    wrapper = PairwiseConsistency(model, **kwargs)
    assert not wrapper.from_logits
    wrapper.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    focus_cb = callbacks.FocusArea(x[:8])
    history = wrapper.fit(x, y, epochs=3, batch_size=16, verbose=0,
                          validation_data=(x[:16], y[:16]), callbacks=[focus_cb])
    logs = history.history
    for key in ("loss", "accuracy", "erased_loss", "consistency", "erased_area",
                "val_loss", "val_consistency", "focus_area/0.5"):
        assert key in logs and np.all(np.isfinite(logs[key])), key
    assert logs["loss"][-1] < logs["loss"][0]
    assert all(0 < a < 1 for a in logs["erased_area"])
    np.testing.assert_allclose(wrapper.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    result = wrapper.evaluate(x, y, verbose=0, return_dict=True)
    assert result["consistency"] >= 0 and "erased_loss" in result


def test_grad_cam_model_sequential_one_hot_labels_and_sample_weights():
    x, y = _task()
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, CHANNELS)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(CLASSES),
    ])
    wrapper = PairwiseConsistency(model, top_k=2)
    assert wrapper._plan.method == "grad_cam" and wrapper.from_logits
    wrapper.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    history = wrapper.fit(x, np.eye(CLASSES)[y], sample_weight=weights, epochs=2, batch_size=16,
                          verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["erased_area"][-1] > 0


def test_mixed_precision_training():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = _task(32)
    wrapper = PairwiseConsistency(_classifier(softmax=True))
    wrapper.compile("adam", "sparse_categorical_crossentropy")
    history = wrapper.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_save_load_round_trip_and_inner_model_export(tmp_path):
    x, y = _task(32)
    model = _classifier(batch_norm=True)
    wrapper = PairwiseConsistency(model, erase_threshold=0.4, erased_weight=0.7,
                                  consistency_weight=0.3, relevance="all", top_k=2,
                                  fill=[0.1, 0.2], region="box", target="prediction",
                                  from_logits=True, feature_layer="conv", method="grad_cam",
                                  name="pcl")
    wrapper.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapper.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "wrapper.keras"
    wrapper.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, PairwiseConsistency)
    assert harness._config_json(loaded.get_config()) == harness._config_json(wrapper.get_config())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), wrapper.predict(x, verbose=0),
                               atol=1e-6)
    assert loaded._plan.method == "grad_cam"
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)  # the optimizer state came back too
    model.save(tmp_path / "inner.keras")
    inner = keras.models.load_model(tmp_path / "inner.keras")
    assert not isinstance(inner, PairwiseConsistency)
    np.testing.assert_allclose(inner.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    maps = analysis.focus_area(wrapper, x[:4])["maps"]  # explained through the inner model
    np.testing.assert_allclose(maps, analysis.focus_area(model, x[:4])["maps"])


def test_config_round_trip_keeps_every_argument():
    wrapper = PairwiseConsistency(_classifier(), erase_threshold=0.25, erased_weight=0.0,
                                  consistency_weight=3.0, relevance="all", top_k=3, fill="mean",
                                  region="box", target="prediction", from_logits=True,
                                  method="cam", data_format="channels_last")
    config = wrapper.get_config()
    again = PairwiseConsistency.from_config(config)
    assert again.get_config() == config
    for key in ("erase_threshold", "erased_weight", "consistency_weight", "relevance", "top_k",
                "fill", "region", "target", "method"):
        assert config[key] == getattr(wrapper, key)
    assert config["from_logits"] is True


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(erase_threshold=0.0), ValueError, "erase_threshold"),
        (dict(erase_threshold=1.0), ValueError, "erase_threshold"),
        (dict(erase_threshold=1.5), ValueError, "erase_threshold"),
        (dict(erase_threshold="half"), TypeError, "erase_threshold"),
        (dict(erased_weight=-1.0), ValueError, "erased_weight"),
        (dict(consistency_weight=float("nan")), ValueError, "consistency_weight"),
        (dict(relevance="neighbours"), ValueError, "relevance"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(fill="blue"), ValueError, "fill"),
        (dict(fill=[[1.0]]), ValueError, "fill"),
        (dict(region="circle"), ValueError, "region"),
        (dict(target="truth"), ValueError, "target"),
        (dict(from_logits="yes"), TypeError, "from_logits"),
        (dict(method="saliency"), ValueError, "method"),
        (dict(feature_layer="missing"), ValueError, "feature_layer"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PairwiseConsistency(_classifier(), **kwargs)


def test_bad_models():
    with pytest.raises(TypeError, match="keras.Model"):
        PairwiseConsistency(keras.layers.Dense(2))
    inputs = keras.Input((SIZE, SIZE, 1))
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="spatial"):
        PairwiseConsistency(flat)


def test_compiling_without_a_loss_is_a_clear_error():
    x, y = _task(16)
    wrapper = PairwiseConsistency(_classifier())
    wrapper.compile("adam")
    with pytest.raises(ValueError, match="compile the wrapper with loss="):
        wrapper.fit(x, y, epochs=1, verbose=0)
