"""Robustness sweeps over every public image layer (tests/layer_cases.py) on this backend.

- Variable image sizes: a fully convolutional model on `keras.Input((None, None, C))` predicts
  and trains on two different image sizes in eager calls, traced steps (`jit_compile=False`)
  and compiled steps (`jit_compile=True`: XLA on TensorFlow and JAX, torch.compile on
  PyTorch), and agrees with the eager layer on each size. TensorFlow relaxes the traced H, W
  to None on the retrace; torch.compile marks them dynamic on the second size.
- Built layers refuse inputs they were not built for (channel count, rank) with a ValueError
  naming the layer and what it expects.
"""

import re

import keras
import numpy as np
import pytest

from keras_convx import layers
from tests import harness
from tests import layer_cases
from tests import portability
from tests.layer_cases import ALL_LAYERS_CHANNELS
from tests.layer_cases import CASES
from tests.layer_cases import COVERED
from tests.layer_cases import all_layers_model
from tests.layer_cases import image

BACKEND = keras.backend.backend()
SIZES = ((8, 8), (11, 7))  # the second odd, non-square: exercises stride remainders
# Compiled steps (XLA, torch.compile) are swept with ONE model holding every layer on its own
# branch (one compilation per backend and size instead of one per layer: torch.compile takes
# about a minute per graph on a 2-core CPU); an uncompiled TensorFlow step is a traced
# tf.function, swept per layer. On jax and torch an uncompiled step runs op by op, as the
# eager layer calls below already do.
# (jit_compile, data_format) of the every-layer step sweep. On a CPU-only machine Keras turns
# TensorFlow's "auto" into False (trainer._resolve_auto_jit_compile), so it is named False
# here: TensorFlow's traced channels_last steps are swept per layer below, its traced
# channels_first steps here. Torch compiles channels_last only: torch.compile of the whole
# channels_first model takes ~4 min on 2 cores. On torch the channels_first layers run
# eagerly here and in the layer contracts; only E4's and LogPolarConv2D's run compiled
# (their recompute cases).
STEP_MODES = [(True, "channels_last")]
if BACKEND != "torch":
    STEP_MODES.append((True, "channels_first"))
if BACKEND == "tensorflow":
    STEP_MODES.append((False, "channels_first"))

def _inputs(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_every_public_image_layer_is_swept():
    graph = {"GraphDiffusion", "GraphHyperbolic"}  # node inputs: tests/test_pde.py
    public = {name for name in layers.__all__
              if isinstance(getattr(layers, name), type)
              and issubclass(getattr(layers, name), keras.layers.Layer)} - graph
    assert public == set(COVERED), f"not swept: {sorted(public - set(COVERED))}"


def _fit_and_compare(model, eager, channels, data_format, label):
    """Two image sizes: predict equals the eager layers, a train step is finite, and the
    compiled predict step still runs after it. The batch grows with the second size (as a
    partial last batch changes it): torch.compile's one recompile makes it dynamic too."""
    for i, hw in enumerate(SIZES):
        x = image(hw, channels, data_format, batch=2 + i, seed=i)
        expected = [harness.to_numpy(y) for y in eager(x)]
        got = _as_list(model.predict(x, verbose=0))
        for name, g, e in zip(model.output_names, got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name}, size {hw}, {label}")
        loss = model.train_on_batch(x, [np.zeros_like(g) for g in got])
        assert np.all(np.isfinite(loss)), f"non-finite loss on size {hw}, {label}"
        assert [y.shape for y in _as_list(model.predict_on_batch(x))] == [g.shape for g in got]


def _as_list(y):
    return y if isinstance(y, list) else [y]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="an uncompiled jax/torch step is eager "
                    "(the eager calls of the compiled sweep cover it)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_image_size_traced_step(name):
    case = CASES[name]
    layer = case.make("channels_last")
    inputs = keras.Input((None, None, case.channels))
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=False)
    _fit_and_compare(model, lambda x: [layer(x, training=False)], case.channels,
                     "channels_last", f"{name}, jit_compile=False")


@pytest.mark.parametrize(("jit_compile", "data_format"), STEP_MODES,
                         ids=[f"jit={j}-{df}" for j, df in STEP_MODES])
def test_unknown_image_size_compiled_step_every_layer(jit_compile, data_format):
    model, eager = all_layers_model(data_format)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=["mse"] * len(model.outputs),
                  jit_compile=jit_compile)
    _fit_and_compare(model, eager, ALL_LAYERS_CHANNELS, data_format,
                     f"{data_format}, jit_compile={jit_compile}")
    if BACKEND == "torch":
        x = image(SIZES[-1], ALL_LAYERS_CHANNELS, data_format)
        _assert_steps_do_not_recompile(model, x)


# Group layers gather their kernels with NumPy indices, which Keras' torch `take` converts by
# reading the array's dtype (a graph break). Converted with `ops.core.constant` instead, E4 is
# traced whole, and inductor (torch 2.13) then failed E4's stride-2 training step at a second,
# dynamic image size ("ValueRangeError: Invalid ranges [0:-1]"): left for a later change.
class _GatherBreak(Exception):
    """dynamo's refusal of the kernel gather's NumPy indices (the expected failure)."""


_GATHER_BREAK = pytest.mark.xfail(strict=True, raises=_GatherBreak,
                                  reason="the kernel gather's NumPy indices")
_ONE_GRAPH_CASES = [pytest.param(n, marks=_GATHER_BREAK) if n.startswith(("Group", "E4"))
                    and n != "GroupBatchNormalization" and n != "GroupPooling" else n
                    for n in sorted(CASES)]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile only: XLA compiles a whole "
                    "function or fails, so the compiled sweeps above cover jax and TensorFlow")
@pytest.mark.parametrize("name", _ONE_GRAPH_CASES)
def test_torch_compile_traces_every_layer_as_one_graph(name):
    """Under torch.compile (what `jit_compile=True` runs on PyTorch) each layer's forward pass,
    in inference and in training (its backward pass traced from it), is one graph at two
    image sizes (each traced for its static shape): `fullgraph=True` raises at a graph
    break. A break splits the step into graphs with Python run between them, and dynamo
    ran whole functions eagerly after one: E4 was
    traced into 24 graphs (NumPy constants handed to Keras' `convert_to_tensor`, the bias'
    `ops.repeat`, pooling tables computed with NumPy in `call`, Keras' BatchNormalization's
    tracked axes list). Static shapes: a dynamic trace of E4 took minutes."""
    import torch

    torch._dynamo.reset()  # every case's lambda is one code object: its cache starts empty
    case = CASES[name]
    layer = case.make("channels_last")
    layer(image(SIZES[0], case.channels, "channels_last"))  # built eagerly, as `fit` does
    for training in (False, True):
        # "aot_eager": dynamo and AOTAutograd trace as in `fit`, without inductor's codegen
        # (the compiled steps above run inductor)
        compiled = torch.compile(lambda v: layer(v, training=training), fullgraph=True,
                                 dynamic=False, backend="aot_eager")
        for i, hw in enumerate(SIZES):
            x = keras.ops.convert_to_tensor(image(hw, case.channels, "channels_last", seed=i))
            try:
                y = compiled(x.requires_grad_(training))
            except torch._dynamo.exc.Unsupported as error:
                if "ndarray attribute" in str(error):
                    raise _GatherBreak(str(error)) from error
                raise
            if not training:
                np.testing.assert_allclose(harness.to_numpy(y), harness.to_numpy(layer(x)),
                                           rtol=1e-5, atol=1e-5, err_msg=f"{name}, size {hw}")
            else:
                torch.sum(y * y).backward()
                grads = [x.grad] + [v.value.grad for v in layer.trainable_variables]
                assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads), name


def _assert_steps_do_not_recompile(model, x):
    """Once warm, a compiled torch step must not be compiled again on every call (Keras'
    `ops.pad` made one named Operation per call and torch.compile guarded on Keras' global
    name counter: E4's step recompiled every time, ~2.5 s instead of ~15 ms)."""
    from torch._dynamo.utils import counters

    targets = [np.zeros_like(harness.to_numpy(y)) for y in _as_list(model.predict_on_batch(x))]
    model.train_on_batch(x, targets)  # settle
    before = counters["stats"]["unique_graphs"]
    for _ in range(2):
        model.train_on_batch(x, targets)
        model.predict_on_batch(x)
    assert counters["stats"]["unique_graphs"] == before, "compiled steps were recompiled"


_NO_CONVOLUTION = {"GroupBatchNormalization", "GroupPooling"}
_TF_EMPTY_BATCH = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="TensorFlow's CPU convolutions return their input's shape "
    "for an empty batch (keras.layers.Conv2D's too: a 1×1 kernel fails, stride 2 keeps the "
    "size), so no convolution layer can")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", [n if n in _NO_CONVOLUTION else pytest.param(n, marks=_TF_EMPTY_BATCH)
                                  for n in sorted(CASES)])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(name, data_format):
    """A batch of no images (an empty last shard, a filtered batch) passes through every layer:
    in training mode, outputs of the layer's shape with no rows; in inference mode, x's
    gradient of x's shape and every weight's gradient finite and zero. (E4 failed on jax and
    torch — reshapes with -1, undetermined when the batch is empty — and GroupPooling(max) on
    torch, whose Keras `max` refuses empty tensors. Not asserted: a training step's batch
    statistics of an empty batch are NaN, in Keras' BatchNormalization as in
    GroupBatchNormalization and SharedBasisConv2D's basis normalisation.)"""
    case = CASES[name]
    layer = case.make(data_format)
    x = image((8, 8), case.channels, data_format, batch=0)
    reference = [harness.to_numpy(y) for y in _as_list(layer(image((8, 8), case.channels,
                                                                      data_format)))]
    if len(reference) == 1:  # (multi-output layers: the shapes are the contract)
        dx, dw = harness.layer_gradients(layer, x, np.zeros((0, *reference[0].shape[1:]), "float32"))
        assert dx.shape == x.shape
        for weight, gradient in dw.items():
            assert np.all(gradient == 0), weight
    # last: a training call's batch statistics of no images are NaN (see above)
    outputs = [harness.to_numpy(y) for y in _as_list(layer(x, training=True))]
    assert [y.shape for y in outputs] == [(0, *y.shape[1:]) for y in reference]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_built_layer_refuses_another_channel_count(name, data_format):
    case = CASES[name]
    layer = case.make(data_format)
    layer(image((8, 8), case.channels, data_format))
    wrong = image((8, 8), 2 * case.channels, data_format)
    # Keras' InputSpec message ("expected axis 3 of input shape to have value 8") or the
    # layer's own ("was built for inputs with 8 channels"): the layer's name and the count.
    pattern = rf"{layer.name}.*(value {case.channels}\b|built for .*{case.channels} channels)"
    with pytest.raises(ValueError, match=pattern):
        layer(wrong)
    symbolic = keras.Input(wrong.shape[1:])
    with pytest.raises(ValueError, match=pattern):
        layer(symbolic)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rank_3_input_is_refused_naming_the_layer(name):
    case = CASES[name]
    layer = case.make("channels_last")
    with pytest.raises(ValueError, match=r"(ndim=4|rank 4|4-D)"):
        layer(_inputs((8, 8, case.channels), 0))


CONV_BASE = ("LogPolarConv2D", "GroupLiftConv2D", "GroupConv2D", "SharedBasisConv2D",
             "SynapticConv2D")


def test_the_conv_layers_share_one_base():
    """The five conv layers take their standard arguments, output shape and config from one
    base (layers/_conv_base.py, Keras' BaseConv style)."""
    from keras_convx.layers._conv_base import BaseConv2D

    for name in CONV_BASE:
        assert issubclass(getattr(layers, name), BaseConv2D), name


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.split("-")[0] in CONV_BASE))
def test_conv_refuses_an_image_smaller_than_its_valid_window(name):
    """With padding="valid" an image smaller than the (dilated) window is a ValueError naming
    the layer and kernel_size, symbolically and eagerly (SynapticConv2D and SharedBasisConv2D
    used to return a negative or zero size)."""
    case = CASES[name]
    layer = case.make("channels_last")
    config = layer.get_config()
    config["padding"] = "valid"
    layer = type(layer).from_config(config)
    k = int(np.max(layer.kernel_size))
    with pytest.raises(ValueError, match=rf"{layer.name}.*smaller than kernel_size"):
        layer.compute_output_shape((None, k - 1, k + 4, case.channels))
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        layer(keras.Input((k - 1, k + 4, case.channels)))


@pytest.mark.parametrize("argument", ["dilation_rate", "groups"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_standard_conv_argument_is_used_or_refused(name, argument):
    """`dilation_rate=2` or `groups=2`: every layer either refuses it with an error naming it,
    or uses it: the output has `compute_output_shape`'s shape (padding "valid", stride 1), the
    config keeps it, and the layer differs from its twin with 1 (dilated: other outputs from
    the same weights; grouped: fewer weights). The group and shared-basis convolutions used
    to accept both, ignore them in the convolution and drop them from the config, while
    their output shape was computed with the dilation."""
    case = CASES[name]
    config = dict(case.make("channels_last").get_config(), name=None)
    if "padding" in config:
        config.update(padding="valid", strides=1)
    cls = type(case.make("channels_last"))
    channels = case.channels * (2 if argument == "groups" else 1)
    x = image((11, 11), channels, "channels_last")
    try:
        layer = cls.from_config({**config, argument: 2})
    except (TypeError, ValueError) as error:
        message = str(error).split("Exception encountered:")[-1]  # from_config's wrapping
        assert re.search(rf"supports only {argument}=1|Unrecognized keyword arguments passed to "
                         rf"{cls.__name__}: {{'{argument}'", message), message
        return
    twin = cls.from_config(config)
    y, y_twin = layer(x), twin(x)
    assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape))
    assert cls.from_config(layer.get_config()).get_config()[argument] in (2, (2, 2))
    if argument == "groups":
        assert layer.count_params() < twin.count_params()
    else:
        twin.set_weights(layer.get_weights())
        assert tuple(y.shape) != tuple(twin(x).shape)


@pytest.mark.parametrize("name", ["LogPolarConv2D", "SynapticConv2D"])
def test_grouped_conv_refuses_channels_groups_does_not_divide(name):
    make = {"LogPolarConv2D": lambda: layers.LogPolarConv2D(4, 5, groups=2),
            "SynapticConv2D": lambda: layers.SynapticConv2D(4, 3, groups=2)}[name]
    with pytest.raises(ValueError, match=r"groups to divide the input channels.*groups=2, "
                                         r"input channels=3"):
        make()(_inputs((1, 8, 8, 3), 0))
    with pytest.raises(ValueError, match="groups to divide filters"):
        type(make())(3, 3, groups=2)


WIDTHS = sorted(set(range(3, 18)) | {31, 32, 33})  # meets every channel count the cases use


def _outputs(layer, x):
    return [harness.to_numpy(y) for y in _as_list(layer(x, training=False))]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the bias heuristic is Keras' TensorFlow "
                    "add (each layer's two data formats are compared on every backend in "
                    "tests/harness.py); eager jax compiles every op anew at each of the widths")
@pytest.mark.parametrize("name", sorted(CASES))
def test_channels_first_is_channels_last_transposed_at_every_width(name):
    """The same weights give the transposed result on the transposed input at every width
    from 3 to 17 and 31 to 33: widths that equal each channel count a layer adds a per-channel
    vector to, inside or at its output. (Keras' TensorFlow `ops.add` reads a (1, C, 1, 1)
    addend as a bias along the LAST axis when the width equals C: Keras' own channels_first
    Conv2D with a bias is wrong there, eagerly.)"""
    case = CASES[name]
    last, first = case.make("channels_last"), case.make("channels_first")
    widths = [w for w in WIDTHS if w >= 5] if "valid" in name else WIDTHS  # (5×5 "valid")
    x = _inputs((2, 5, widths[0], case.channels), 0)
    _outputs(last, x)
    _outputs(first, np.transpose(x, (0, 3, 1, 2)))
    portability.randomise(last, 0)  # biases and shifts non-zero (their initialisers give 0)
    first.set_weights(last.get_weights())
    for width in widths:
        x = _inputs((2, 5, width, case.channels), width)
        expected = _outputs(last, x)
        got = _outputs(first, np.transpose(x, (0, 3, 1, 2)))
        for e, g in zip(expected, got):
            np.testing.assert_allclose(np.transpose(g, (0, 2, 3, 1)), e, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name}, width {width}")


# float64 also for the options whose paths the cases leave out
FLOAT64_CASES = {**CASES,
                 "LogPolarConv2D-max-groups-nobias": layer_cases.Case(
                     lambda df: layers.LogPolarConv2D(4, 5, rings=2, sectors=4, growth_rate=2.0,
                                                      pooling="max", groups=2, use_bias=False,
                                                      data_format=df), 4),
                 "GroupPooling-mean": layer_cases.Case(
                     lambda df: layers.GroupPooling("p4", pooling="mean", data_format=df), 8)}


@pytest.mark.skipif(BACKEND == "jax", reason="Keras on JAX computes a float64 layer in float32 "
                    "(JAX's x64 mode is off), as its own Dense and Conv2D")
@pytest.mark.parametrize("name", sorted(FLOAT64_CASES))
def test_a_float64_layer_keeps_float64_and_agrees_with_float32(name):
    """`dtype="float64"` gives float64 outputs (inference and training calls) and gradients,
    equal to the float32 layer's. (The group and log-polar kernels' matrix products and the
    max pooling came back float32 from Keras' torch ops, whose type rules turn 64 bits into
    32, and failed in the convolution; the group batch norm mixed float32 statistics with
    float64 variables on TensorFlow.) Not asserted: float64 precision, which Keras' torch
    `matmul` and `mean` do not give (README)."""
    case = FLOAT64_CASES[name]
    single = case.make("channels_last")
    x = image((8, 8), case.channels, "channels_last")
    _outputs(single, x)
    portability.randomise(single, 0)
    expected = _outputs(single, x)
    double = type(single).from_config({**single.get_config(), "dtype": "float64"})
    x = x.astype("float64")
    double(x)
    double.set_weights([w.astype(keras.backend.standardize_dtype(v.dtype))
                        for w, v in zip(single.get_weights(), double.weights)])
    trained = _as_list(double(x, training=True))  # batch statistics, moving averages
    assert {keras.backend.standardize_dtype(y.dtype) for y in trained} == {"float64"}
    double.set_weights([w.astype(keras.backend.standardize_dtype(v.dtype))
                        for w, v in zip(single.get_weights(), double.weights)])
    got = _as_list(double(x, training=False))
    assert [keras.backend.standardize_dtype(y.dtype) for y in got] == ["float64"] * len(got)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(harness.to_numpy(g), e, rtol=1e-4, atol=1e-4)
    dx, dw = harness.layer_gradients(double, x, np.ones(got[0].shape, "float32"))
    assert harness.to_numpy(dx).dtype == np.float64
    for variable in double.trainable_variables:  # (a shared FilterBasis keeps its own dtype)
        gradient = harness.to_numpy(dw[variable.name])
        assert gradient.dtype == keras.backend.standardize_dtype(variable.dtype), variable.name
        assert np.all(np.isfinite(gradient)), variable.name
