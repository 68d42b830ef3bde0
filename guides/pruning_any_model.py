"""# Pruning any Keras 3 model: tfmot's workflow on jax, tensorflow and torch

TensorFlow Model Optimization (tfmot) is the pruning toolkit Keras users know, and it does not
run on Keras 3. `keras_convx.pruning.make_prunable` gives any Functional or Sequential Keras 3
model pruning masks — here a plain Keras CNN + MLP with no keras_convx layer in it — and
`keras_convx.callbacks.Pruning` prunes it on a schedule during `fit`, as tfmot's
`prune_low_magnitude` + `UpdatePruningStep` did.

This guide, on scikit-learn's bundled digits (16×16):
1. trains the dense model;
2. fine-tunes a pruned copy for each setting: unstructured 50 / 80 / 90% (`"weight"`), 2:4
   (`"2:4"`: 2 kept in every 4 along the input axis) and 50% of the channels and hidden units
   (`"channel"`), the sparsity raised from 0 on a `PolynomialDecay` schedule;
3. reports accuracy, non-zero parameters, the compressed size of the stripped weights file
   and, for the channel-pruned model after `pruning.compact`, the parameters and the forward
   time at batch 32 (`predict_on_batch`) against the dense model;
4. exports the compacted model to ONNX and (full run) LiteRT, each file verified against
   Keras by `keras_convx.export`.

Run: `KERAS_BACKEND=torch python guides/pruning_any_model.py` (plots go to $KERAS_CONVX_OUT,
default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`).
"""

import gzip
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
from keras_convx import prunable  # noqa: E402
from keras_convx import pruning  # noqa: E402

OUT, FAST = demo.script_options(__doc__, "pruning_any_model")
SIZE = 16
EPOCHS = 1 if FAST else 30
FINE_TUNE_EPOCHS = 1 if FAST else 10
BATCH = 32
SETTINGS = [("weight", 0.5), ("weight", 0.8), ("weight", 0.9), ("2:4", 0.5), ("channel", 0.5)]

x_train, y_train, x_test, y_test = demo.load_digits_data(size=SIZE, limit=300 if FAST else None)
print(f"backend {keras.backend.backend()}: digits {SIZE}×{SIZE}, {len(x_train)} train / "
      f"{len(x_test)} test")


def dense_model():
    """A plain Keras CNN + MLP: nothing of keras_convx in it."""
    keras.utils.set_random_seed(0)
    x = keras.Input((SIZE, SIZE, 1))
    y = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    y = keras.layers.MaxPooling2D()(y)
    y = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(64, activation="relu", name="hidden")(y)
    y = keras.layers.Dense(10, activation="softmax", name="classes")(y)
    return keras.Model(x, y)


def compile_model(model, lr=2e-3):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def accuracy(model):
    return float(model.evaluate(x_test, y_test, verbose=0)[1])


def compressed_size(model):
    """Bytes of the gzip-compressed weights file (zeros compress: tfmot's size measure)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.weights.h5")
        model.save_weights(path)
        with open(path, "rb") as f:
            return len(gzip.compress(f.read()))


def nonzero_params(model):
    return int(sum(np.count_nonzero(keras.ops.convert_to_numpy(w)) for w in model.weights))


def forward_ms(model, repeats=3 if FAST else 20):
    x = x_test[:BATCH]
    model.predict_on_batch(x)  # build / compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


# ## 1. The dense model
base = compile_model(dense_model())
base.fit(x_train, y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0)
plain = pruning.strip(base)  # a fresh copy: the same weights file layout as the stripped ones
rows = [("dense", accuracy(base), nonzero_params(plain), compressed_size(plain))]
print(f"dense: accuracy {rows[0][1]:.3f}, {rows[0][2]:,} parameters, {rows[0][3]:,} bytes gz")

# ## 2. Pruned and fine-tuned copies
steps = FINE_TUNE_EPOCHS * -(-len(x_train) // BATCH)
models = {}
for granularity, target in SETTINGS:
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    model = compile_model(pruning.make_prunable(model, granularity=granularity), lr=1e-3)
    every = max(steps // 8, 1)  # the target is reached half way, then kept
    schedule = pruning.PolynomialDecay(0.0, target, begin_step=0, end_step=4 * every,
                                       frequency=every)
    model.fit(x_train, y_train, batch_size=BATCH, epochs=FINE_TUNE_EPOCHS, verbose=0,
              callbacks=[callbacks.Pruning(schedule)])
    label = granularity if granularity == "2:4" else f"{granularity} {target:.0%}"
    stripped = pruning.strip(model)
    models[label] = (model, stripped)
    report = pruning.sparsity_report(model)
    rows.append((label, accuracy(model), nonzero_params(stripped), compressed_size(stripped)))
    print(f"{label:12} accuracy {rows[-1][1]:.3f}, sparsity {report['total']:.2f}, "
          f"{rows[-1][2]:,} non-zero parameters, {rows[-1][3]:,} bytes gz")

# The 2:4 pattern holds exactly in every group of the pruned layers.
for layer in pruning.masked_layers(models["2:4"][0]):
    for name, mask in layer.pruning_masks.items():
        input_axis = prunable.prunable_weights(layer)[name][1][0]
        blocks = np.moveaxis(keras.ops.convert_to_numpy(mask), input_axis, -1).reshape(-1, 4)
        assert np.all(blocks.sum(-1) == 2), (layer.name, name)

# ## 3. Channel pruning + compact: a smaller, faster model with the same outputs
pruned, _ = models["channel 50%"]
small, info = pruning.compact(pruned, return_report=True)
difference = float(np.max(np.abs(small.predict(x_test, verbose=0)
                                 - pruned.predict(x_test, verbose=0))))
assert difference < 1e-4, difference
dense_ms, small_ms = forward_ms(base), forward_ms(small)
print(f"compact: {info['params_before']:,} → {info['params_after']:,} parameters, MACs "
      f"{info['macs_before']:,} → {info['macs_after']:,}; conv channels kept "
      f"{info['conv_channels_kept']}, hidden units {info['dense_units_kept']['hidden']}; "
      f"max |Δ| {difference:.1e}; forward at batch {BATCH}: dense {dense_ms:.2f} ms, "
      f"compact {small_ms:.2f} ms ({dense_ms / small_ms:.2f}× faster)")

# ## 4. ONNX and LiteRT files of the compacted model, each verified against Keras
onnx_path = os.path.join(OUT, "compact.onnx")
export.to_onnx(small, onnx_path, sample_inputs=x_test[:4])
print(f"wrote {onnx_path} (ONNX Runtime output verified against Keras)")
if not FAST:  # (off the backend tensorflow a TensorFlow subprocess writes it: skipped in CI)
    litert_path = os.path.join(OUT, "compact.tflite")
    litert = export.to_litert(small, litert_path, sample_inputs=x_test[:4])
    print(f"wrote {litert_path}, {litert['bytes']:,} bytes (LiteRT interpreter output "
          "verified against Keras)")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
labels = [r[0] for r in rows]
ax1.bar(labels, [r[1] for r in rows], color="tab:blue")
ax1.set_ylim(0, 1)
ax1.set_ylabel("test accuracy")
ax1.set_title(f"Fine-tuned {FINE_TUNE_EPOCHS} epochs ({keras.backend.backend()})")
ax2.bar(labels, [r[3] / 1024 for r in rows], color="tab:orange")
ax2.set_ylabel("gzip-compressed weights (KiB)")
ax2.set_title("Size after strip")
for ax in (ax1, ax2):
    ax.tick_params(axis="x", rotation=30)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "pruning_any_model.png"), dpi=100)
plt.close(fig)
print(f"wrote {OUT}/pruning_any_model.png")
