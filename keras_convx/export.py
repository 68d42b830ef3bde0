"""Export: fold keras_convx layers into core Keras layers, then ONNX / LiteRT files that are
verified against Keras before they are handed back.

`fold(model)` (from `keras_convx.folding`, re-exported here) is the first step of every export
route: an equivalent model in which every layer that is, at inference, a plain convolution or
batch norm becomes one, so exporters and runtimes only see core Keras layers. `to_onnx` and
`to_litert` fold, export, run the file in ONNX Runtime / the LiteRT interpreter on sample
inputs and compare with Keras; any failure is an `ExportError` naming the layer(s) that do not
export on this backend.
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import graph
from keras_convx.folding import fold
from keras_convx.folding import foldable  # noqa: F401
from keras_convx.ops import dispatcher
from keras_convx.ops.core import window_slice

__all__ = ["ExportError", "fold", "foldable", "runtime", "to_litert", "to_onnx"]


class ExportError(RuntimeError):
    """An export route failed; the message names the backend, the format and the layer(s)."""


class _SlicedMaxPooling2D(keras.layers.Layer):
    """`MaxPooling2D` as the maximum of pool_h·pool_w strided slices (−inf padding for
    "same", TensorFlow's alignment): identical outputs. jax2onnx writes Keras' own
    max pooling (a 4-D `reduce_window`) as an ONNX MaxPool that ONNX Runtime rejects
    ("Unsupported pooling size"), and PyTorch's exporter fails on a "same" one; this form
    exports. Used only inside `to_onnx`, on those backends."""

    def __init__(self, pool_size, strides, padding, data_format, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides = tuple(pool_size), tuple(strides)
        self.padding, self.data_format = padding, data_format

    def call(self, x):
        if self.data_format == "channels_first":
            x = keras.ops.transpose(x, (0, 2, 3, 1))
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        if self.padding == "same":  # the padding needs the sizes (PyTorch traces them)
            h, w = int(x.shape[1]), int(x.shape[2])
            oh, ow = (h + sh - 1) // sh, (w + sw - 1) // sw
            ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
            x = keras.ops.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2),
                                  (0, 0)), constant_values=float(np.finfo("float32").min))
        y = None  # "valid": the slices need no size (a symbolic one stays symbolic)
        for i in range(kh):
            for j in range(kw):
                part = window_slice(x, (i, j), (kh, kw), (sh, sw))
                y = part if y is None else keras.ops.maximum(y, part)
        return y if self.data_format == "channels_last" else keras.ops.transpose(y, (0, 3, 1, 2))


def _needs_sliced_pooling(layer, backend):
    """Keras' MaxPooling2D that fails ONNX export here: every one on JAX (see above); on
    PyTorch a "same" one (its padding is computed from traced sizes)."""
    return type(layer) is keras.layers.MaxPooling2D and (
        backend == "jax" or (backend == "torch" and layer.padding == "same"))


def _portable_pooling(layer):
    if not _needs_sliced_pooling(layer, keras.backend.backend()):
        return None
    new = _SlicedMaxPooling2D(layer.pool_size, layer.strides, layer.padding, layer.data_format,
                              dtype=layer.dtype_policy, name=layer.name)
    return new, lambda _: None


# Spatial sizes verified when the model's image size is unknown: two, one odd and
# non-square, so a file whose height and width were fixed at export fails verification.
DYNAMIC_SIZES = ((12, 12), (15, 11))


def _sample_inputs(model, sample_inputs, batch_sizes=(2, 3)):
    """The batches an exported file is verified on: `sample_inputs` if given, else random
    batches of 2 and 3 (the dynamic batch) of the model's input shape, where unknown height
    and width (`keras.Input((None, None, C))`) take the two `DYNAMIC_SIZES`."""
    if sample_inputs is not None:
        return [np.asarray(sample_inputs, dtype="float32")]
    if len(model.inputs) != 1:
        raise ValueError("Pass sample_inputs= for models with several inputs.")
    shape = tuple(model.inputs[0].shape[1:])
    unknown = [i for i, d in enumerate(shape) if d is None]
    channels_first = len(shape) == 3 and shape[0] is not None and shape[1] is None
    spatial = [1, 2] if channels_first else [0, 1]
    if unknown and (len(shape) != 3 or sorted(unknown) != spatial):
        raise ValueError(
            f"The model's input shape {model.inputs[0].shape} has unknown dimensions other than "
            "height and width: pass sample_inputs= (a NumPy batch).")
    rng = np.random.default_rng(0)
    batches = []
    for b, hw in zip(batch_sizes, DYNAMIC_SIZES):
        full = list(shape)
        for axis, size in zip(spatial, hw):
            if full[axis] is None:
                full[axis] = size
        batches.append(rng.standard_normal((b, *full)).astype("float32"))
    return batches


def _reference(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype="float32")


def runtime(path):
    """A NumPy-in, NumPy-out predict function running an exported file outside Keras.

    `.onnx` runs in ONNX Runtime (CPU), `.tflite` in the LiteRT interpreter (its input is
    resized when the batch size changes). The session / interpreter is created once, so the
    function is what to time against `model.predict`.

    Example:

    ```python
    keras_convx.export.to_onnx(model, "model.onnx")
    predict = keras_convx.export.runtime("model.onnx")
    predict(x_test[:32]).shape          # (32, num_classes)
    ```
    """
    path = os.fspath(path)
    if path.endswith(".onnx"):
        import onnxruntime  # noqa: PLC0415

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.asarray(x, dtype="float32")})[0]
    if not path.endswith(".tflite"):
        raise ValueError(f"Expected a '.onnx' or '.tflite' path. Received: path={path!r}")
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_path=path)
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]["index"]
    shape = [None]

    def predict(x):
        x = np.asarray(x, dtype="float32")
        if shape[0] != x.shape:
            interpreter.resize_tensor_input(detail["index"], x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return predict


def _export_file(model, path, fmt, x):
    """Writes `path` (Keras' own exporter; LiteRT from JAX/PyTorch through TensorFlow); `x`:
    a batch the model runs on."""
    backend = keras.backend.backend()
    if fmt == "onnx" and any(_needs_sliced_pooling(layer, backend)
                             for layer in graph.all_layers(model)):  # nested models' too
        model = graph.rewrite(model, _portable_pooling)
        model(x[:1])  # the exporter needs a call
    if fmt == "onnx" or backend == "tensorflow":
        with dispatcher.portable_mode():  # no XLA functions, no gathers in the trace
            model.export(path, format="onnx" if fmt == "onnx" else "litert", verbose=False)
        return
    # Keras exports LiteRT from TensorFlow only: the weights are portable, so the model is
    # saved and re-exported by a TensorFlow-backend subprocess.
    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "model.keras")
        model.save(saved)
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, "-m", "keras_convx.export", "litert", saved, os.fspath(path)],
            env=env, capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                               else f"exit status {proc.returncode}")


def _export_and_verify(model, path, fmt, inputs, atol, rtol):
    """Exports and compares; returns the largest |difference|. Raises on any failure."""
    references = [_reference(model, x) for x in inputs]  # also "calls" a fresh clone
    _export_file(model, path, fmt, inputs[0])
    run = runtime(path)
    worst = 0.0
    for x, expected in zip(inputs, references):
        got = np.asarray(run(x), dtype="float32")
        if got.shape != expected.shape:
            raise RuntimeError(f"the file's output shape {got.shape} != Keras' {expected.shape}")
        difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
        if not np.allclose(got, expected, atol=atol, rtol=rtol):
            raise RuntimeError(
                f"outputs differ from Keras by up to {difference:.3g} (atol={atol}, "
                f"rtol={rtol}) for a batch of {len(x)}"
            )
        worst = max(worst, difference)
    return worst


def _culprits(model, fmt, atol, rtol):
    """The layers that fail the same route on their own (diagnosis): the keras_convx layers
    first; only when none of them fails, the core Keras layers."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    core = [layer for layer in layers if type(layer).__module__.startswith("keras.")]
    ours = [layer for layer in layers if layer not in core]
    failing = []
    with tempfile.TemporaryDirectory() as folder:
        for group in (ours, core):
            for layer in group:
                try:
                    inputs = keras.Input(tuple(layer.input.shape[1:]))
                    single = keras.Model(inputs, layer(inputs))
                    _export_and_verify(single, os.path.join(folder, layer.name + _SUFFIX[fmt]),
                                       fmt, _sample_inputs(single, None), atol, rtol)
                except Exception as error:  # noqa: BLE001 - any failure is the diagnosis
                    message = str(error).strip()
                    failing.append(f"{layer.name} ({type(layer).__name__}): "
                                   f"{message.splitlines()[0][:200] if message else type(error).__name__}")
            if failing:
                break
    return failing


_SUFFIX = {"onnx": ".onnx", "litert": ".tflite"}


def _unknown_size_hint(model):
    """What to try when a model of unknown image size failed to export: Keras' exporters
    trace it at a placeholder size (PyTorch's at 1 pixel, where a "valid" window larger than
    one pixel cannot run) or with symbolic sizes (jax2onnx, where a strided window's size
    arithmetic may not lower)."""
    shape = model.inputs[0].shape[1:] if len(model.inputs) == 1 else ()
    if not any(d is None for d in shape):
        return ""
    return ("; the model's input size is unknown ({}), which Keras' exporter traces at a "
            "placeholder or symbolic size: a model on a fixed size, keras.Input((H, W, C)), "
            "may export".format(tuple(shape)))


def _check_export_args(model, path, sample_inputs, atol, rtol, fold_first):
    """The arguments of `to_onnx`/`to_litert`, checked before any export work (so a bad
    tolerance, batch or folder is reported as such, not blamed on a layer)."""
    arguments.number("atol", atol, 0)
    arguments.number("rtol", rtol, 0)
    arguments.boolean("fold_first", fold_first)
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"The folder of path does not exist: {folder!r}. Received: path={path!r}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"The folder of path is not writable: {folder!r}. Received: path={path!r}")
    if sample_inputs is None:
        return
    if len(model.inputs) != 1:
        raise ValueError("sample_inputs must be one NumPy batch: export verifies models with "
                         f"one input. Received a model with {len(model.inputs)} inputs.")
    try:
        batch = np.asarray(sample_inputs, dtype="float32")
    except (TypeError, ValueError) as error:
        raise TypeError("Expected sample_inputs to be a NumPy batch of numbers. Received: "
                        f"sample_inputs of type {type(sample_inputs).__name__} ({error})") from None
    expected = tuple(model.inputs[0].shape)
    if batch.ndim != len(expected) or any(
            e is not None and e != g for e, g in zip(expected[1:], batch.shape[1:])):
        raise ValueError(f"Expected sample_inputs of shape (batch, *{expected[1:]}) to match the "
                         f"model's input {expected}. Received: sample_inputs.shape={batch.shape}")
    if batch.shape[0] < 1 or not np.all(np.isfinite(batch)):
        raise ValueError("Expected sample_inputs to be a non-empty batch of finite numbers. "
                         f"Received: shape {batch.shape}, finite: {bool(np.all(np.isfinite(batch)))}")


def _export(model, path, fmt, sample_inputs, atol, rtol, fold_first):
    label = {"onnx": "ONNX", "litert": "LiteRT"}[fmt]
    if not os.fspath(path).endswith(_SUFFIX[fmt]):
        raise ValueError(
            f"Expected path to end with {_SUFFIX[fmt]!r} for {label}. Received: path={path!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected model to be a keras.Model. Received: model={model!r}")
    _check_export_args(model, path, sample_inputs, atol, rtol, fold_first)
    exported = fold(model) if fold_first else model
    inputs = _sample_inputs(exported, sample_inputs)
    try:
        difference = _export_and_verify(exported, path, fmt, inputs, atol, rtol)
    except Exception as error:  # noqa: BLE001 - re-raised with the diagnosis
        culprits = _culprits(exported, fmt, atol, rtol)
        where = ("; the layer(s) failing on their own: " + " | ".join(culprits)) if culprits \
            else "; no single layer fails on its own (the combination does)"
        first = str(error).strip().splitlines()[0][:300] if str(error) else type(error).__name__
        raise ExportError(
            f"{label} export of model {model.name!r} on the {keras.backend.backend()} backend "
            f"failed: {first}{where}{_unknown_size_hint(exported)}"
        ) from error
    return {
        "path": os.fspath(path),
        "format": fmt,
        "backend": keras.backend.backend(),
        "max_abs_difference": difference,
        "batch_sizes": [len(x) for x in inputs],
        "bytes": os.path.getsize(path),
    }


def to_onnx(model, path, sample_inputs=None, atol=1e-4, rtol=1e-4, fold_first=True):
    """Folds `model`, exports it to ONNX with Keras' exporter for the current backend
    (tf2onnx / jax2onnx / torch.onnx), runs the file in ONNX Runtime and compares.

    Args:
        model: a Functional or Sequential model.
        path: the `.onnx` file to write.
        sample_inputs: a NumPy batch to verify on; default random normal batches of 2 and 3
            (the second checks the dynamic batch dimension).
        atol, rtol: the tolerance of the comparison with Keras' own inference outputs.
        fold_first: apply `fold` first (default True).

    Returns:
        dict: `path`, `format`, `backend`, `max_abs_difference`, `batch_sizes`, `bytes`.

    Raises:
        ExportError: export or verification failed; the message names the layer(s) that
            fail the same route on their own.

    Example:

    ```python
    report = keras_convx.export.to_onnx(model, "model.onnx")
    report["max_abs_difference"]        # e.g. 3e-7
    ```
    """
    return _export(model, path, "onnx", sample_inputs, atol, rtol, fold_first)


def to_litert(model, path, sample_inputs=None, atol=1e-4, rtol=1e-4, fold_first=True):
    """Folds `model`, exports a LiteRT (`.tflite`) file and verifies it in the LiteRT
    interpreter (builtin ops only: a file needing TensorFlow "Flex" ops fails to run there and
    is reported).

    On TensorFlow it uses Keras' exporter; on JAX and PyTorch, where Keras has none, the
    folded model is saved and exported by a TensorFlow-backend subprocess (weights are
    portable across backends), then verified here against this backend's outputs.
    Arguments and result as `to_onnx`.

    Example:

    ```python
    keras_convx.export.to_litert(model, "model.tflite")["bytes"]
    ```
    """
    return _export(model, path, "litert", sample_inputs, atol, rtol, fold_first)


def _main(argv):
    """`python -m keras_convx.export litert SRC.keras DST.tflite` (TensorFlow backend)."""
    if len(argv) != 3 or argv[0] != "litert":
        raise SystemExit("usage: python -m keras_convx.export litert SRC.keras DST.tflite")
    import keras_convx  # noqa: F401,PLC0415  (registers the classes the file names)

    with dispatcher.portable_mode():
        keras.models.load_model(argv[1]).export(argv[2], format="litert", verbose=False)


if __name__ == "__main__":
    _main(sys.argv[1:])
