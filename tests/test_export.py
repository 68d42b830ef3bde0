"""export.fold: every foldable layer family becomes core Keras layers with identical
inference outputs, the others are kept; to_onnx / to_litert of every foldable family verified
in ONNX Runtime and the LiteRT interpreter; an unexportable layer is named in the error."""

import keras
import numpy as np
import pytest

from keras_convx import export
from keras_convx import layers
from tests import harness
from tests import layer_cases
from tests import portability


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _randomise(model, seed=0):
    """Random weights everywhere (BN variances positive) so nothing folds by accident."""
    portability.randomise(model, seed)


def _model(body, shape=(12, 12, 3)):
    inputs = keras.Input(shape)
    outputs = body(inputs)
    model = keras.Model(inputs, outputs)
    _randomise(model)
    return model


def _is_core(layer):
    return type(layer).__module__.startswith("keras.")


def _check_fold(model, x, kept=()):
    folded = export.fold(model)
    np.testing.assert_allclose(harness.to_numpy(folded(x, training=False)),
                               harness.to_numpy(model(x, training=False)), rtol=1e-4, atol=1e-4)
    leaves = [inner for layer in folded.layers
              for inner in (layer.layers if isinstance(layer, keras.Sequential) else [layer])]
    left = sorted({type(layer).__name__ for layer in leaves if not _is_core(layer)})
    assert left == sorted(kept), left
    return folded


@pytest.mark.parametrize("kwargs", [
    dict(padding="same"),
    dict(padding="same", strides=2),
    dict(padding="valid", strides=2, pooling="sum", activation="relu"),
    dict(padding="same", groups=3, use_bias=False),
], ids=["same", "same-s2", "valid-s2-sum", "groups"])
def test_log_polar_folds_to_conv2d(kwargs):
    model = _model(lambda x: layers.LogPolarConv2D(6, 9, rings=2, sectors=6, growth_rate=3.0,
                                                   **kwargs)(x))
    folded = _check_fold(model, _rand(2, 12, 12, 3))
    if kwargs.get("strides") == 2 and kwargs["padding"] == "same":
        block = folded.layers[-1]
        assert [type(layer).__name__ for layer in block.layers] == ["ZeroPadding2D", "Conv2D"]


def test_log_polar_max_pooling_is_kept():
    model = _model(lambda x: layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0,
                                                   pooling="max")(x))
    assert not export.foldable(model.layers[-1])
    _check_fold(model, _rand(2, 12, 12, 3), kept=["LogPolarConv2D"])


@pytest.mark.parametrize("group", ["p4", "p4m", "c8"])
def test_group_layers_fold_and_e4_stays(group):
    def body(x):
        x = layers.GroupLiftConv2D(3, 3, group=group, padding="same", use_bias=True)(x)
        x = layers.GroupBatchNormalization(group=group)(x)
        x = keras.layers.ReLU()(x)
        x = layers.GroupConv2D(2, 3, group=group, strides=2, use_bias=True)(x)
        x = layers.E4Conv2D(2, 3, group=group, reduction_ratio=1, slices=2)(x)
        return layers.GroupPooling(group=group)(x)

    model = _model(body)
    folded = _check_fold(model, _rand(2, 12, 12, 3), kept=["E4Conv2D", "GroupPooling"])
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)


def test_shared_basis_with_basis_batch_norm_folds():
    basis = layers.FilterBasis(4, 3)

    def body(x):
        x = layers.SharedBasisConv2D(5, basis, unique_bases=1, use_bias=True)(x)
        return layers.SharedBasisConv2D(5, basis, unique_bases=1, strides=2,
                                        activation="relu")(x)

    model = _model(body, shape=(10, 10, 5))
    _check_fold(model, _rand(2, 10, 10, 5))


def test_synaptic_and_pde_layers():
    def body(x):
        x = layers.SynapticConv2D(4, 3, padding="same")(x)
        return layers.DiffusionConv2D(3)(x)

    model = _model(body)
    _check_fold(model, _rand(2, 12, 12, 3), kept=["DiffusionConv2D"])


def test_folded_model_saves_with_core_layers_only(tmp_path):
    model = _model(lambda x: layers.GroupConv2D(2, 3, group="p4")(
        layers.GroupLiftConv2D(2, 3, group="p4")(x)))
    folded = export.fold(model)
    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.models.load_model(path)
    assert all(_is_core(layer) for layer in loaded.layers)
    x = _rand(2, 12, 12, 3)
    np.testing.assert_allclose(harness.to_numpy(loaded(x)), harness.to_numpy(model(x)),
                               rtol=1e-4, atol=1e-4)


def test_fold_rejects_subclassed_models():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Functional or Sequential"):
        export.fold(Net())


# ------------------------------------------------------------------------- ONNX and LiteRT


def _every_family_model(shape=(None, None, 3)):
    """Every layer family in one classifier: the ones fold turns into core layers (synaptic,
    log-polar mean, shared basis, lifting/group conv, group BN) and the ones it keeps
    (max-pooling log-polar, both grid PDE layers with 3×3 K, E4 p4m at stride 2, group
    pooling). The channels_first model below carries c8 (kernels through the steerable
    basis)."""
    def body(x):
        x = layers.SynapticConv2D(4, 3, padding="same")(x)
        x = layers.LogPolarConv2D(6, 5, rings=2, sectors=4, growth_rate=2.0, strides=2)(x)
        x = keras.layers.ReLU()(x)
        basis = layers.FilterBasis(4, 3)
        x = layers.SharedBasisConv2D(6, basis, unique_bases=1)(x)
        x = layers.SharedBasisConv2D(6, basis, unique_bases=1, activation="relu")(x)
        x = layers.GroupLiftConv2D(2, 3, group="p4", padding="same")(x)
        x = layers.GroupBatchNormalization(group="p4")(x)
        x = layers.GroupConv2D(2, 3, group="p4", padding="same", activation="relu")(x)
        x = layers.GroupPooling(group="p4")(x)
        x = layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0, pooling="max")(x)
        x = layers.DiffusionConv2D(kernel_size=3, stable=True)(x)
        x = layers.HyperbolicConv2D(3, kernel_size=3)(x)
        x = layers.GroupLiftConv2D(2, 3, group="p4m", padding="same")(x)
        x = layers.E4Conv2D(2, 3, group="p4m", reduction_ratio=1, slices=2, strides=2)(x)
        x = layers.GroupPooling(group="p4m")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.layers.Dense(3)(x)

    return _model(body, shape=shape)


KEPT = ["DiffusionConv2D", "E4Conv2D", "GroupPooling", "HyperbolicConv2D", "LogPolarConv2D"]


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_every_family_exports_and_verifies(fmt, tmp_path):
    """Every layer family, folded (as core layers) or kept (exported as they are: no XLA
    function, gather, custom gradient or batch split in the traced graph, see
    `ops.portable_mode`), in ONE model, reaches ONNX Runtime and LiteRT on every backend,
    with a dynamic batch AND a dynamic image size (verified on 12×12 and 15×11)."""
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "ai_edge_litert")  # extra "export"
    dynamic = not (fmt == "onnx" and keras.backend.backend() == "jax")
    # A stride-2 E4 with a symbolic image size does not reach ONNX from jax (jax2onnx cannot
    # lower its "same" pooling's size-dependent padding): that ONNX file gets a fixed size
    # (README); the channels_first test below exports the other families dynamic from jax.
    model = _every_family_model() if dynamic else _every_family_model(shape=(12, 12, 3))
    kept = KEPT
    _check_fold(model, _rand(2, 12, 12, 3), kept=kept)
    path = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'tflite'}"
    convert = export.to_onnx if fmt == "onnx" else export.to_litert
    report = convert(model, path)
    assert report["max_abs_difference"] < 1e-4 and report["bytes"] == path.stat().st_size
    assert report["batch_sizes"] == [2, 3]  # the batch dimension is dynamic
    sizes = [(12, 12), (17, 13)] if dynamic else [(12, 12)]
    for x in (_rand(n, *hw, 3, seed=5 + n) for n, hw in zip((4, 1), sizes)):  # and H, W too
        got = export.runtime(path)(x)
        np.testing.assert_allclose(got, harness.to_numpy(model(x, training=False)), rtol=1e-4,
                                   atol=1e-4)


def _channels_first_model():
    """Every family in channels_first (folded and kept ones) on a dynamic image size."""
    df = "channels_first"

    def body(x):
        x = layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0, data_format=df)(x)
        x = layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0, strides=2,
                                  padding="same", data_format=df)(x)  # folds with explicit pads
        x = layers.SynapticConv2D(4, 3, padding="same", data_format=df)(x)
        basis = layers.FilterBasis(3, 3, data_format=df)
        x = layers.SharedBasisConv2D(4, basis, unique_bases=1, data_format=df)(x)
        x = layers.DiffusionConv2D(kernel_size=3, stable=True, data_format=df)(x)
        x = layers.HyperbolicConv2D(kernel_size=3, data_format=df)(x)
        x = layers.GroupLiftConv2D(2, 3, group="c8", padding="same", data_format=df)(x)
        x = layers.GroupBatchNormalization(group="c8", data_format=df)(x)
        x = layers.GroupConv2D(2, 3, group="c8", padding="same", data_format=df)(x)
        x = layers.E4Conv2D(2, 3, group="c8", reduction_ratio=1, slices=2, data_format=df)(x)
        x = layers.GroupPooling(group="c8", data_format=df)(x)
        x = keras.layers.GlobalAveragePooling2D(data_format=df)(x)
        return keras.layers.Dense(3)(x)

    return _model(body, shape=(3, None, None))


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_channels_first_model_folds_exports_and_verifies(fmt, tmp_path):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "ai_edge_litert")
    model = _channels_first_model()
    x = _rand(2, 3, 12, 12)
    _check_fold(model, x, kept=["DiffusionConv2D", "E4Conv2D", "GroupPooling", "HyperbolicConv2D"])
    path = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'tflite'}"
    convert = export.to_onnx if fmt == "onnx" else export.to_litert
    report = convert(model, path, sample_inputs=x)
    assert report["max_abs_difference"] < 1e-4
    other = _rand(1, 3, 15, 11, seed=3)
    np.testing.assert_allclose(export.runtime(path)(other),
                               harness.to_numpy(model(other, training=False)), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(), dict(pool_size=3, strides=2, padding="same"),
                                    dict(pool_size=(3, 2), strides=(2, 1))],
                         ids=["2x2", "3x3-s2-same", "3x2-s2x1"])
def test_max_pooling_at_an_unknown_size_exports_or_says_to_fix_the_size(kwargs, tmp_path):
    """Keras' MaxPooling2D on an unknown image size: from TensorFlow the ONNX file stays
    dynamic (verified on two sizes); from jax (jax2onnx cannot lower the strided windows of a
    symbolic size) and PyTorch (Keras traces unknown sizes at 1 pixel, and bakes the "same"
    padding in) the ExportError says to fix the input size, and at a fixed size the file
    verifies. `to_onnx` used to fail first on building its pooling replacement (it called
    the model on a batch of size None)."""
    pytest.importorskip("onnxruntime")  # the "export" extra

    def model(size):
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        built = keras.Model(inputs, keras.layers.MaxPooling2D(**kwargs)(x))
        _randomise(built)
        return built

    if keras.backend.backend() == "tensorflow":
        assert export.to_onnx(model(None), tmp_path / "m.onnx")["max_abs_difference"] < 1e-5
    else:
        with pytest.raises(export.ExportError, match=r"input size is unknown \(\(None, None, "
                                                     r"3\)\).*keras\.Input\(\(H, W, C\)\)"):
            export.to_onnx(model(None), tmp_path / "m.onnx")
    assert export.to_onnx(model(12), tmp_path / "f.onnx")["max_abs_difference"] < 1e-5


@pytest.mark.parametrize("kwargs", [dict(), dict(pool_size=3, strides=2, padding="same"),
                                    dict(pool_size=(3, 2), strides=(2, 1))],
                         ids=["2x2", "3x3-s2-same", "3x2-s2x1"])
def test_max_pooling_exports_to_onnx(kwargs, tmp_path):
    """Keras' own MaxPooling2D reaches ONNX Runtime on JAX too (a strided-slice form there)."""
    pytest.importorskip("onnxruntime")  # the "export" extra
    inputs = keras.Input((11, 11, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    model = keras.Model(inputs, keras.layers.MaxPooling2D(**kwargs)(x))
    _randomise(model)
    report = export.to_onnx(model, tmp_path / "model.onnx")
    assert report["max_abs_difference"] < 1e-5


def test_portable_take_equals_take():
    from keras_convx.ops import core
    from keras_convx.ops import dispatcher

    x = _rand(3, 4, 5)
    for axis, indices in ((0, np.array([2, 0, 0, 1])), (1, np.array([[3, 1], [0, 2]])),
                          (2, np.array([4, 3, 2, 1, 0]))):
        expected = np.take(x, indices, axis=axis)
        with dispatcher.portable_mode():
            got = harness.to_numpy(core.static_take(keras.ops.convert_to_tensor(x), indices, axis))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(
            harness.to_numpy(core.static_take(keras.ops.convert_to_tensor(x), indices, axis)),
            expected)


def test_portable_mode_turns_fast_paths_off():
    """Except the forms marked portable (what exporters trace better than the reference)."""
    from keras_convx.ops import dispatcher

    for name in dispatcher.available_fast_paths():
        fast = dispatcher.fast_path(name)
        with dispatcher.portable_mode():
            if fast.portable:
                assert dispatcher.dispatch(name, len) is fast
            else:
                assert dispatcher.fast_path(name) is None
                assert dispatcher.dispatch(name, len) is len
    assert not dispatcher.portable()
    with pytest.raises(TypeError, match="flag"):
        with dispatcher.portable_mode("yes"):
            pass


@keras.saving.register_keras_serializable(package="keras_convx_tests")
class HostRoundTrip(keras.layers.Layer):
    """Leaves the graph for NumPy: no exporter can trace it."""

    def call(self, x):
        return keras.ops.convert_to_tensor(np.tanh(keras.ops.convert_to_numpy(x)))

    def compute_output_shape(self, input_shape):
        return input_shape


def test_unexportable_layer_is_named_in_the_error(tmp_path):
    pytest.importorskip("onnxruntime")  # the "export" extra
    def body(x):
        x = layers.GroupLiftConv2D(2, 3, group="p4")(x)
        x = HostRoundTrip(name="host_round_trip")(x)
        return keras.layers.GlobalAveragePooling2D()(x)

    model = _model(body)
    with pytest.raises(export.ExportError, match="host_round_trip \\(HostRoundTrip\\)"):
        export.to_onnx(model, tmp_path / "model.onnx")


def test_export_paths_must_name_the_format(tmp_path):
    model = _model(lambda x: keras.layers.Conv2D(2, 3)(x))
    with pytest.raises(ValueError, match="'.onnx'"):
        export.to_onnx(model, tmp_path / "model.tflite")
    with pytest.raises(ValueError, match="'.tflite'"):
        export.to_litert(model, tmp_path / "model.litert")
    with pytest.raises(TypeError, match="keras.Model"):
        export.to_onnx(keras.layers.Dense(2), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="'.onnx' or '.tflite'"):
        export.runtime(tmp_path / "model.keras")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", sorted(layer_cases.CASES))
def test_every_layer_folds_by_its_equivalent_or_is_kept(name, data_format):
    """The fold protocol swept over every public image layer: a layer with an equivalent
    (`equivalent_conv()` not None, or `equivalent_batch_norm()`) folds to core layers with
    identical inference outputs; any other is kept as it is."""
    case = layer_cases.CASES[name]
    layer = case.make(data_format)
    shape = (9, 9, case.channels) if data_format == "channels_last" else (case.channels, 9, 9)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    _randomise(model)
    x = _rand(2, *shape, seed=4)
    kept = [] if export.foldable(layer) else [type(layer).__name__]
    assert export.foldable(layer) == (name.split("-")[0] in FOLDS and name != "LogPolarConv2D-max")
    _check_fold(model, x, kept=kept)


# The public layers that fold (every other one is kept).
FOLDS = {"LogPolarConv2D", "GroupLiftConv2D", "GroupConv2D", "GroupBatchNormalization",
         "SharedBasisConv2D", "SynapticConv2D"}


@harness.FLOAT64_PRECISION
@pytest.mark.parametrize("name", sorted(n for n in layer_cases.CASES
                                        if n.split("-")[0] in FOLDS and n != "LogPolarConv2D-max"))
def test_a_float64_layer_folds_to_float64_core_layers(name):
    """A float64 layer's fold holds float64 weights: its outputs agree to 1e-12 (they were
    rounded to float32 on the way: about 1e-7)."""
    case = layer_cases.CASES[name]
    config = dict(case.make("channels_last").get_config(), dtype="float64")
    layer = type(case.make("channels_last")).from_config(config)
    inputs = keras.Input((9, 9, case.channels), dtype="float64")
    model = keras.Model(inputs, layer(inputs))
    _randomise(model)
    folded = export.fold(model)
    assert {keras.backend.standardize_dtype(w.dtype) for w in folded.weights} == {"float64"}
    x = _rand(2, 9, 9, case.channels, seed=4).astype("float64")
    np.testing.assert_allclose(harness.to_numpy(folded(x, training=False)),
                               harness.to_numpy(model(x, training=False)), rtol=1e-12, atol=1e-12)


def test_foldable_needs_a_built_layer():
    with pytest.raises(ValueError, match="built"):
        export.foldable(layers.GroupConv2D(2, 3, group="p4"))


def test_moved_and_renamed_names_keep_working():
    """Deprecated aliases of the names the README and ARCHITECTURE.md used before the
    middle-floor redesign: they still work (the renamed methods warn)."""
    from keras_convx import analysis
    from keras_convx import focus
    from keras_convx import initializers
    from keras_convx.layers import group_conv
    from keras_convx.layers import group_maps
    from keras_convx.layers import pde
    from keras_convx.layers import pde_graph

    assert analysis.FocusPlan is focus.FocusPlan and analysis.focus_area is focus.focus_area
    assert pde.GraphDiffusion is pde_graph.GraphDiffusion
    assert pde.CentredIdentity is initializers.CentredIdentity is layers.CentredIdentity
    assert group_conv.GroupPooling is group_maps.GroupPooling
    conv = layers.GroupConv2D(2, 3, group="p4", use_bias=True)
    conv.build((None, 6, 6, 8))
    with pytest.warns(DeprecationWarning, match="equivalent_conv"):
        kernel = conv.dense_kernel()
    np.testing.assert_array_equal(harness.to_numpy(kernel), harness.to_numpy(conv.equivalent_conv()[0]))
    basis_conv = layers.SharedBasisConv2D(3, layers.FilterBasis(2, 3), unique_bases=1)
    basis_conv.build((None, 6, 6, 2))
    np.testing.assert_array_equal(harness.to_numpy(basis_conv.synthesized_kernel()[0]),
                                  harness.to_numpy(basis_conv.equivalent_conv()[0]))
