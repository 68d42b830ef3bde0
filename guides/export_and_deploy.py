"""# Export and deploy: fold, ONNX, LiteRT — with every layer family in one model

A keras_convx model is a Keras model, so it deploys the way Keras models do; three things
make that exact and checked:

1. `keras_convx.export.fold(model)` rewrites every layer that is, at inference, a plain
   convolution or batch norm into one (log-polar mean/sum, lifting and group convs, shared
   filter bases, synaptic convs → `Conv2D`; group batch norm → `BatchNormalization`). What
   cannot fold (E4, the PDE layers, group pooling, max-pooling log-polar) stays as it is.
2. `export.to_onnx(model, "m.onnx")` and `export.to_litert(model, "m.tflite")` fold, export
   (Keras' own exporter, traced in `keras_convx.ops.portable_mode()`; LiteRT from JAX or
   PyTorch through a TensorFlow subprocess), run the file on batches of 2 and 3 and compare
   with Keras, or raise an `ExportError` naming the layer that fails.
3. `export.runtime(path)` is the file's predict function in ONNX Runtime / LiteRT.

This guide trains a small digits classifier that uses every layer family (scikit-learn's
bundled digits at 16×16, no download) with 50% of its synaptic connections pruned, folds it,
exports it to both formats, checks the files' test accuracy and largest difference against
Keras, and times ONNX Runtime and LiteRT against `model.predict` at batch 1 and 32. A
`training.PairwiseConsistency` wrapper deploys through `wrapper.model` like any classifier.

Run: `KERAS_BACKEND=torch python guides/export_and_deploy.py` (any backend; plots go to
$KERAS_CONVX_OUT, default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`). The benchmark `benchmarks/export_inference.py` times
the same model on every backend (benchmarks/RESULTS.md).
"""

import os
import tempfile
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx import callbacks  # noqa: E402
from keras_convx import demo  # noqa: E402
from keras_convx import export  # noqa: E402
from keras_convx import layers  # noqa: E402
from keras_convx import pruning  # noqa: E402

OUT, FAST = demo.script_options(__doc__, "export_and_deploy")
SIZE = 16
EPOCHS = 1 if FAST else 8
REPEATS = 5 if FAST else 50


def every_family_cnn(input_shape=(SIZE, SIZE, 1), num_classes=10):
    """A digits classifier with a layer of every family (foldable ones and kept ones)."""
    basis = layers.FilterBasis(6, 3)
    inputs = keras.Input(input_shape)
    # log-polar: a 7×7 mean-pooling stem (folds) and a 5×5 max-pooling layer (kept)
    x = layers.LogPolarConv2D(12, 7, rings=2, sectors=6, growth_rate=2.0)(inputs)
    x = layers.LogPolarConv2D(12, 5, rings=2, sectors=4, growth_rate=2.0, pooling="max")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    # two convolutions sharing one filter basis (fold, basis batch norm included)
    x = layers.SharedBasisConv2D(12, basis, unique_bases=1, activation="relu")(x)
    x = layers.SharedBasisConv2D(12, basis, unique_bases=1, activation="relu")(x)
    # PDE steps with a 3×3 K (kept)
    x = layers.DiffusionConv2D(kernel_size=3, stable=True)(x)
    x = layers.HyperbolicConv2D(kernel_size=3, stable=True)(x)
    # a prunable convolution (folds to its effective kernel)
    x = layers.SynapticConv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    # p4 group convolutions (fold), group batch norm (folds), E4 and group pooling (kept)
    x = layers.GroupLiftConv2D(4, 3, group="p4", padding="same")(x)
    x = layers.GroupBatchNormalization(group="p4")(x)
    x = keras.layers.ReLU()(x)
    x = layers.E4Conv2D(4, 3, group="p4", reduction_ratio=1, slices=2)(x)
    x = keras.layers.ReLU()(x)
    x = layers.GroupConv2D(4, 3, group="p4", padding="same")(x)
    x = layers.GroupBatchNormalization(group="p4")(x)
    x = keras.layers.ReLU()(x)
    x = layers.GroupPooling(group="p4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="every_family_cnn")


def convx_layers(model):
    """The layers of `model` that are keras_convx layers (not core Keras ones)."""
    return [layer for layer in model.layers if type(layer).__module__.startswith("keras_convx")]


def median_ms(fn, x, repeats=REPEATS, warmup=3):
    """Median wall time of fn(x) in milliseconds."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def inference_times(model, runtimes, batch_sizes=(1, 32), repeats=REPEATS):
    """{runner: {batch: ms}} for Keras predict / predict_on_batch and each exported runtime.

    `runtimes`: {label: predict function}, each made with `export.runtime(path)`."""
    runners = {
        "Keras predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
        "Keras predict_on_batch": model.predict_on_batch,
        **runtimes,
    }
    rng = np.random.default_rng(0)
    shape = tuple(model.inputs[0].shape[1:])
    result = {name: {} for name in runners}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *shape)).astype("float32")
        for name, run in runners.items():
            result[name][batch] = median_ms(run, x, repeats)
    return result


def export_both(model, folder):
    """Folds and exports `model` to ONNX and LiteRT in `folder`: ({label: path}, reports)."""
    files, reports = {}, {}
    for label, convert, suffix in (("ONNX Runtime", export.to_onnx, ".onnx"),
                                   ("LiteRT", export.to_litert, ".tflite")):
        path = os.path.join(folder, model.name + suffix)
        reports[label] = convert(model, path)
        files[label] = path
    return files, reports


def train(data):
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(0)
    model = every_family_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    steps = EPOCHS * -(-len(x_train) // 32)
    prune = callbacks.SynapticPruning(
        pruning.ConstantSparsity(0.5, begin_step=steps // 2, frequency=steps))
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[prune])
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    return model, float(accuracy)


def main():
    os.makedirs(OUT, exist_ok=True)
    data = demo.load_digits_data(size=SIZE, limit=400 if FAST else None)
    x_test, y_test = data[2], data[3]
    start = time.time()
    model, accuracy = train(data)
    print(f"backend {keras.backend.backend()}: trained {EPOCHS} epoch(s) in "
          f"{time.time() - start:.1f} s, test accuracy {accuracy:.3f}, synaptic sparsity "
          f"{pruning.sparsity(model)['total']:.2f}")

    folded = export.fold(model)
    ours = convx_layers(model)
    kept = sorted({type(layer).__name__ for layer in convx_layers(folded)})
    fold_difference = float(np.max(np.abs(folded.predict(x_test, verbose=0)
                                          - model.predict(x_test, verbose=0))))
    print(f"fold: {len(ours)} keras_convx layers → {len(ours) - len(convx_layers(folded))} "
          f"core Keras layers; kept as they are: "
          f"{', '.join(kept)}; max |folded − model| on the test set {fold_difference:.2e}")

    with tempfile.TemporaryDirectory() as folder:
        model.save(os.path.join(folder, "model.keras"))
        folded.save(os.path.join(folder, "folded.keras"))
        files, reports = export_both(model, folder)
        sizes = {"model.keras": os.path.getsize(os.path.join(folder, "model.keras")),
                 "folded .keras": os.path.getsize(os.path.join(folder, "folded.keras"))}
        expected = model.predict(x_test, verbose=0)
        print("\n| runtime | file | KB | verified max |diff| (batches 2, 3) | "
              "test-set max |diff| | test accuracy |")
        print("|---|---|---:|---:|---:|---:|")
        print(f"| Keras | model.keras | {sizes['model.keras'] / 1024:.0f} | – | – | "
              f"{accuracy:.3f} |")
        runtimes = {label: export.runtime(path) for label, path in files.items()}
        for label, path in files.items():
            got = runtimes[label](x_test)
            sizes[label] = reports[label]["bytes"]
            print(f"| {label} | {os.path.basename(path)} | {reports[label]['bytes'] / 1024:.0f} "
                  f"| {reports[label]['max_abs_difference']:.2e} | "
                  f"{np.max(np.abs(got - expected)):.2e} | "
                  f"{np.mean(got.argmax(-1) == y_test):.3f} |")
        times = inference_times(model, runtimes)

    print("\n| runner | batch 1 (ms) | batch 32 (ms) | batch 32 vs Keras predict |")
    print("|---|---:|---:|---:|")
    base = times["Keras predict"][32]
    for name, row in times.items():
        print(f"| {name} | {row[1]:.2f} | {row[32]:.2f} | {row[32] / base:.2f}× |")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(times)
    for i, batch in enumerate((1, 32)):
        ax1.bar(np.arange(len(names)) + 0.4 * i, [times[n][batch] for n in names], 0.4,
                label=f"batch {batch}")
    ax1.set_xticks(np.arange(len(names)) + 0.2, names, rotation=15, fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms per call (median)")
    ax1.set_title(f"inference, {keras.backend.backend()} backend")
    ax1.legend()
    ax2.bar(list(sizes), [v / 1024 for v in sizes.values()], color="tab:gray")
    ax2.set_ylabel("KB")
    ax2.set_title("file sizes")
    ax2.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "export_and_deploy.png"), dpi=120)
    print(f"\nplot: {os.path.join(OUT, 'export_and_deploy.png')}")


if __name__ == "__main__":
    main()
