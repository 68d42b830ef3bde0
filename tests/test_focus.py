"""Focus maps: CAM / Grad-CAM, resize + normalisation, erasing, the restricted consistency
term (ops.focus) against the NumPy oracle; analysis.focus_area; callbacks.FocusArea."""

import keras
import numpy as np
import pytest

from keras_convx import analysis
from keras_convx import callbacks
from keras_convx.ops import focus
from tests import harness
from tests.oracles import focus as oracle
from tests.oracles.shared_basis import conv2d


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _np(x):
    return harness.to_numpy(x).astype(np.float64)


def cam_model(size=12, channels=3, filters=4, classes=5, data_format="channels_last",
              softmax=True, seed=0, batch_norm=False, dropout=True, scale=1.0):
    """conv → [BN] → ReLU → GAP → [Dropout] → Dense, conv and head drawn from N(0, scale²)."""
    shape = (size, size, channels) if data_format == "channels_last" else (channels, size, size)
    inputs = keras.Input(shape)
    x = inputs
    if data_format == "channels_first":  # TF's CPU Conv2D is NHWC only: convolve there
        x = keras.layers.Permute((2, 3, 1))(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", name="conv")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(x)
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2))(x)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format)(x)
    if dropout:
        x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None,
                                 name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in (model.get_layer("conv"), model.get_layer("head")):
        layer.set_weights([rng.standard_normal(w.shape).astype("float32") * scale
                           for w in layer.get_weights()])
    return model


def _flatten_model(size=6, channels=2, filters=3, classes=4, seed=0):
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(filters, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(classes, name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()])
    return model


def _oracle_features(model, x):
    """ReLU(conv(x)) of the test models, computed in NumPy from the weights."""
    conv = model.get_layer("conv")
    kernel, bias = (_np(w) for w in conv.get_weights())
    return np.maximum(conv2d(x.astype(np.float64), kernel, 1, "same") + bias, 0.0)


# ---------------------------------------------------------------------------------- ops.focus


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_class_activation_maps_match_oracle(data_format):
    features, weights = _rand(3, 5, 6, 4), _rand(4, 7, seed=1)
    classes = np.array([0, 6, 3])
    given = features if data_format == "channels_last" else features.transpose(0, 3, 1, 2)
    got = _np(focus.class_activation_maps(given, weights, classes, data_format))
    np.testing.assert_allclose(got, oracle.cam(features.astype(np.float64), weights, classes),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source,size", [((5, 5), (16, 16)), ((8, 6), (32, 24)), ((7, 7), (7, 7)),
                                         ((3, 4), (28, 29))])
def test_focus_maps_resize_and_normalise_like_oracle(source, size):
    raw = _rand(2, *source)
    got = _np(focus.focus_maps(raw, size))
    expected = oracle.normalize(oracle.resize(raw.astype(np.float64), size))
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0, abs=1e-6)


def test_constant_map_normalises_to_zero():
    got = _np(focus.focus_maps(np.full((1, 4, 4), 3.0, "float32"), (8, 8)))
    assert np.all(got == 0.0)


@pytest.mark.parametrize("region", ["mask", "box"])
@pytest.mark.parametrize("fill", [0.0, -1.5, [0.25, -2.0, 7.0]], ids=["zero", "scalar", "channel"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_erase_changes_exactly_the_thresholded_area(region, fill, data_format):
    rng = np.random.default_rng(3)
    maps = rng.uniform(size=(4, 9, 10)).astype("float32")
    maps[3] = 0.0  # nothing to erase
    images = _rand(4, 9, 10, 3, seed=4)
    masks = _np(focus.erase_masks(maps, 0.7, region))
    expected_mask = oracle.erase_mask(maps, 0.7, region)
    np.testing.assert_array_equal(masks, expected_mask)
    given = images if data_format == "channels_last" else images.transpose(0, 3, 1, 2)
    fill_value = np.asarray(fill, "float32")
    erased = _np(focus.erase(given, masks, fill_value, data_format))
    if data_format == "channels_first":
        erased = erased.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(erased, oracle.erase(images, expected_mask, fill))
    kept = expected_mask == 0
    np.testing.assert_array_equal(erased[kept], images[kept])  # nothing else touched
    assert expected_mask[:3].sum() > 0 and expected_mask[3].sum() == 0


def test_box_region_covers_the_bounding_box():
    maps = np.zeros((1, 6, 7), "float32")
    maps[0, 1, 2] = maps[0, 4, 5] = 1.0
    box = _np(focus.erase_masks(maps, 0.5, "box"))[0]
    assert box.sum() == 4 * 4 and box[1:5, 2:6].all()


def test_relevance_mask_and_restricted_kl_match_oracle():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(8), size=6).astype("float32")
    q = rng.dirichlet(np.ones(8), size=6).astype("float32")
    labels = np.array([0, 7, 3, 3, 5, 1])
    for top_k in (1, 3, 8):
        mask = _np(focus.relevance_mask(p, labels, "top_k", top_k))
        np.testing.assert_array_equal(mask, oracle.top_k_relevant(p, labels, top_k))
        got = _np(focus.restricted_kl(p, q, mask))
        np.testing.assert_allclose(got, oracle.restricted_kl(p.astype(np.float64), q, mask > 0),
                                   rtol=1e-5, atol=1e-6)
    everything = _np(focus.relevance_mask(p, labels, "all"))
    assert np.all(everything == 1)
    full = _np(focus.restricted_kl(p, q, everything))
    np.testing.assert_allclose(full, np.sum(p * np.log(p / q), axis=1), rtol=1e-5, atol=1e-6)
    assert np.all(full > 0)


def test_consistency_is_zero_for_identical_predictions_and_positive_otherwise():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(5), size=4).astype("float32")
    labels = np.array([0, 1, 2, 3])
    for relevance in ("top_k", "all"):
        mask = focus.relevance_mask(p, labels, relevance, 3)
        assert np.all(np.abs(_np(focus.restricted_kl(p, p, mask))) < 1e-7)
        shifted = np.roll(p, 1, axis=1)
        assert np.all(_np(focus.restricted_kl(p, shifted, mask)) > 1e-3)


def test_labels_to_classes_accepts_sparse_and_one_hot():
    for y in (np.array([2, 0, 1]), np.array([[2], [0], [1]]), np.eye(3)[[2, 0, 1]]):
        np.testing.assert_array_equal(_np(focus.labels_to_classes(y, 3)), [2, 0, 1])


# ---------------------------------------------------------------------- analysis.focus_area


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_focus_area_cam_matches_oracle(data_format):
    model = cam_model(data_format=data_format)
    x = _rand(5, 12, 12, 3, seed=7)
    given = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    features = _oracle_features(model, x)
    kernel, bias = (_np(w) for w in model.get_layer("head").get_weights())
    logits = features.mean(axis=(1, 2)) @ kernel + bias
    predicted = logits.argmax(-1)
    result = analysis.focus_area(model, given, threshold=0.4, data_format=data_format)
    assert result["method"] == "cam"
    np.testing.assert_array_equal(result["classes"], predicted)
    expected = oracle.normalize(oracle.resize(oracle.cam(features, kernel, predicted), (12, 12)))
    np.testing.assert_allclose(result["maps"], expected, atol=1e-5)
    clear = np.abs(expected - 0.4) > 1e-4  # pixels not within rounding of τ
    np.testing.assert_array_equal((result["maps"] >= 0.4)[clear], (expected >= 0.4)[clear])
    assert np.allclose(result["focus_area"], (expected >= 0.4).mean(axis=(1, 2)), atol=2 / 144)
    labels = np.array([4, 3, 2, 1, 0])
    by_label = analysis.focus_area(model, given, classes=labels, data_format=data_format)
    np.testing.assert_allclose(
        by_label["maps"],
        oracle.normalize(oracle.resize(oracle.cam(features, kernel, labels), (12, 12))),
        atol=1e-5)


def test_focus_area_grad_cam_matches_oracle():
    model = _flatten_model()
    x = _rand(3, 6, 6, 2, seed=8)
    features = _oracle_features(model, x)
    kernel, bias = (_np(w) for w in model.get_layer("head").get_weights())
    classes = np.array([1, 3, 0])
    result = analysis.focus_area(model, x, classes=classes, threshold=0.5)
    assert result["method"] == "grad_cam"
    expected = oracle.normalize(oracle.grad_cam_flatten_dense(features, kernel, classes))
    np.testing.assert_allclose(result["maps"], expected, atol=1e-5)


def test_grad_cam_on_a_cam_model_is_the_rectified_cam():
    model = cam_model(softmax=False)
    x = _rand(4, 12, 12, 3, seed=9)
    classes = np.array([0, 1, 2, 3])
    grad = analysis.focus_area(model, x, classes=classes, method="grad_cam")["maps"]
    features = _oracle_features(model, x)
    kernel = _np(model.get_layer("head").kernel)
    expected = oracle.normalize(oracle.resize(np.maximum(oracle.cam(features, kernel, classes),
                                                         0.0), (12, 12)))
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_focus_area_named_feature_layer_uses_grad_cam_there():
    model = cam_model()
    result = analysis.focus_area(model, _rand(2, 12, 12, 3), feature_layer="conv")
    assert result["method"] == "grad_cam" and result["maps"].shape == (2, 12, 12)
    assert analysis.focus_area(model, _rand(2, 12, 12, 3), feature_layer="features")[
        "method"] == "cam"


def test_sequential_model_is_supported():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    result = analysis.focus_area(model, _rand(3, 8, 8, 1))
    assert result["method"] == "cam" and result["maps"].shape == (3, 8, 8)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5])
def test_focus_area_threshold_outside_unit_interval(threshold):
    with pytest.raises(ValueError, match="threshold"):
        analysis.focus_area(cam_model(), _rand(1, 12, 12, 3), threshold=threshold)


def test_focus_area_bad_arguments():
    model = cam_model()
    with pytest.raises(TypeError, match="threshold"):
        analysis.focus_area(model, _rand(1, 12, 12, 3), threshold="0.5")
    with pytest.raises(ValueError, match="method"):
        analysis.focus_area(model, _rand(1, 12, 12, 3), method="saliency")
    with pytest.raises(ValueError, match="feature_layer"):
        analysis.focus_area(model, _rand(1, 12, 12, 3), feature_layer="nope")
    with pytest.raises(ValueError, match="one class per image"):
        analysis.focus_area(model, _rand(2, 12, 12, 3), classes=[1])
    # a class the model does not have, or not an index (they used to give all-zero maps on
    # tensorflow and jax, a RuntimeError deep in torch, or be truncated)
    classes = model.output_shape[-1]
    with pytest.raises(ValueError, match=rf"classes in \[0, {classes}\).*\[{classes}\]"):
        analysis.focus_area(model, _rand(2, 12, 12, 3), classes=[0, classes])
    with pytest.raises(ValueError, match=r"classes in \[0, .*\[-1\]"):
        analysis.focus_area(model, _rand(2, 12, 12, 3), classes=[-1, 0])
    with pytest.raises(TypeError, match="integer class indices"):
        analysis.focus_area(model, _rand(2, 12, 12, 3), classes=[0.5, 1.0])
    with pytest.raises(ValueError, match="method='cam'"):
        analysis.focus_area(_flatten_model(), _rand(1, 6, 6, 2), method="cam")


def test_model_without_spatial_feature_map_is_rejected():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="spatial"):
        analysis.focus_area(keras.Model(inputs, outputs), _rand(1, 8, 8, 1))
    vector = keras.Input((5,))
    with pytest.raises(ValueError, match="4-D image input"):
        analysis.focus_area(keras.Model(vector, keras.layers.Dense(2)(vector)), _rand(1, 5))


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3)
            self.pool = keras.layers.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.conv(x))

    net = Net()
    net(_rand(1, 6, 6, 1))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        analysis.focus_area(net, _rand(1, 6, 6, 1))


def test_grad_cam_bypassed_feature_map_is_rejected():
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(2, 3, padding="same")(a)
    merged = keras.layers.Add()([a, b])
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(merged))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="does not depend on the feature map"):
        analysis.focus_area(model, _rand(1, 6, 6, 2), feature_layer=b._keras_history[0].name)
    assert analysis.focus_area(model, _rand(1, 6, 6, 2))["method"] == "grad_cam"


# --------------------------------------------------------------------- callbacks.FocusArea


def test_focus_area_callback_logs_every_epoch_and_plots(tmp_path):
    model = cam_model(size=8, channels=1, classes=3)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _rand(16, 8, 8, 1, seed=10), np.arange(16) % 3
    path = tmp_path / "focus.png"
    cb = callbacks.FocusArea((x[:6], y[:6]), thresholds=(0.2, 0.5), target="label",
                             plot_path=path)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    for t in ("0.2", "0.5"):
        assert len(history.history[f"focus_area/{t}"]) == 2
    final = analysis.focus_area(model, x[:6], threshold=0.2, classes=y[:6])
    assert history.history["focus_area/0.2"][-1] == pytest.approx(final["focus_area"].mean(),
                                                                  abs=1e-6)
    np.testing.assert_array_equal(cb.classes, y[:6])
    assert [r["epoch"] for r in cb.records] == [0, 1]
    assert path.exists()


def test_callback_plots_leave_pyplot_alone(tmp_path):
    """Every callback's `plot` (GradientFlow, FocusArea; FocusArea's runs every epoch with
    plot_path) draws on a Figure of its own: the session's matplotlib backend stays as the
    user set it (a notebook's inline one; they used to switch it to Agg for good) and no
    figure is left open in pyplot (GradientFlow's were never closed: more than 20 make
    pyplot warn)."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.close("all")
    matplotlib.use("svg")
    try:
        model = cam_model(size=8, channels=1, classes=3)
        model.compile("sgd", "sparse_categorical_crossentropy")
        x, y = _rand(8, 8, 8, 1, seed=11), np.arange(8) % 3
        flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=1)
        focus = callbacks.FocusArea(x[:4], plot_path=tmp_path / "focus.png")
        model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[flow, focus])
        ax = flow.plot(tmp_path / "flow.png")
        assert ax.get_lines() and (tmp_path / "flow.png").stat().st_size > 0
        assert focus.plot(tmp_path / "again.png").axes
        assert (tmp_path / "focus.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
    finally:
        plt.close("all")
        matplotlib.use(previous)


def test_focus_area_callback_bad_arguments():
    x = _rand(4, 8, 8, 1)
    model = cam_model(size=8, channels=1, classes=3)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*\[5\]"):  # before any epoch
        model.fit(x, np.zeros(4), epochs=1, verbose=0,
                  callbacks=[callbacks.FocusArea((x, [0, 1, 5, 2]), target="label")])
    with pytest.raises(ValueError, match="thresholds"):
        callbacks.FocusArea(x, thresholds=(0.2, 1.0))
    with pytest.raises(ValueError, match="thresholds"):
        callbacks.FocusArea(x, thresholds=())
    with pytest.raises(ValueError, match="needs data=\\(images, labels\\)"):
        callbacks.FocusArea(x, target="label")
    with pytest.raises(ValueError, match="target"):
        callbacks.FocusArea(x, target="truth")
    with pytest.raises(ValueError, match="4-D"):
        callbacks.FocusArea(x[0])


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
def test_mixed_format_model_maps_its_features_in_their_own_layout(method):
    """Images channels_last, feature map channels_first (a Permute, then channels_first conv
    and head): the maps equal those of the same model built all channels_last. (With one
    data_format for both, the feature map was read along the wrong axes.)"""
    x = _rand(3, 8, 8, 2, seed=4)

    def build(mixed):
        inputs = keras.Input((8, 8, 2))
        df = "channels_first" if mixed else "channels_last"
        h = keras.layers.Permute((3, 1, 2))(inputs) if mixed else inputs
        h = keras.layers.Conv2D(5, 3, padding="same", activation="relu", data_format=df,
                                name="conv")(h)
        h = keras.layers.GlobalAveragePooling2D(data_format=df)(h)
        model = keras.Model(inputs, keras.layers.Dense(4, name="head")(h))
        rng = np.random.default_rng(5)
        model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()])
        return model

    plain, mixed = build(False), build(True)
    kwargs = dict(threshold=0.5, method=method, data_format="channels_last",
                  feature_layer="conv" if method == "grad_cam" else None)
    want = analysis.focus_area(plain, x, **kwargs)
    got = analysis.focus_area(mixed, x, **kwargs)
    np.testing.assert_allclose(got["maps"], want["maps"], rtol=1e-4, atol=1e-5)


def test_images_layout_is_the_models_or_asked_for_when_it_mixes():
    from keras_convx import training

    inputs = keras.Input((2, 8, 8))
    h = keras.layers.Conv2D(3, 3, padding="same", data_format="channels_first")(inputs)
    h = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(h)
    uniform = keras.Model(inputs, keras.layers.Dense(4)(h))
    assert training.PairwiseConsistency(uniform).data_format == "channels_first"
    mixed = cam_model(data_format="channels_first")  # Permute → channels_last conv → back
    with pytest.raises(ValueError, match="pass data_format"):
        training.PairwiseConsistency(mixed)
    with pytest.raises(ValueError, match="pass data_format"):
        analysis.focus_area(mixed, _rand(2, 3, 12, 12))
    assert training.PairwiseConsistency(mixed, data_format="channels_first").data_format == "channels_first"


def test_focus_maths_takes_an_empty_batch():
    """A batch of no images (an empty last shard) gives empty maps, masks and class sets:
    Keras' max/min refuse tensors with no elements on TensorFlow (eagerly) and torch, even
    where the reduced axes are not empty (this failed on both)."""
    maps = focus.focus_maps(np.zeros((0, 2, 2), "float32"), (4, 4))
    assert harness.to_numpy(maps).shape == (0, 4, 4)
    for region in ("mask", "box"):
        assert harness.to_numpy(focus.erase_masks(maps, 0.5, region)).shape == (0, 4, 4)
    chosen = focus.relevance_mask(np.zeros((0, 10), "float32"), np.zeros((0,), "int32"), top_k=3)
    assert harness.to_numpy(chosen).shape == (0, 10)


def test_empty_safe_reductions_agree_with_numpy_and_refuse_non_floats():
    """`ops.core.reduce_max/reduce_min` (the reductions behind the focus maths and
    GroupPooling): NumPy's max/min on filled tensors, any axes and keepdims, NaN kept."""
    from keras_convx.ops import core

    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    x[1, 2, 3] = np.nan
    for axis in (1, 2, (1, 2)):
        for keepdims in (False, True):
            np.testing.assert_array_equal(
                harness.to_numpy(core.reduce_max(x, axis=axis, keepdims=keepdims)),
                np.max(x, axis=axis, keepdims=keepdims))
            np.testing.assert_array_equal(
                harness.to_numpy(core.reduce_min(x, axis=axis, keepdims=keepdims)),
                np.min(x, axis=axis, keepdims=keepdims))
    for bad in (np.ones((2, 3), "int32"), np.ones((2, 3), bool)):
        with pytest.raises(TypeError, match="float tensors"):
            core.reduce_max(bad, axis=1)
