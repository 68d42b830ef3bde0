"""# Pairwise consistency learning: make a scene classifier look at more of the image

Chen et al. ("See More for Scene: Pairwise Consistency Learning for Scene Classification",
NeurIPS 2021) find that scene classifiers do better when their decision rests on a large
part of the image — a large *focus area* — and that ordinary training shrinks it. Their
scheme erases what the network already looks at (where its class activation map is ≥ τ),
trains on the erased view too, and keeps the two predictions consistent with a KL term
restricted to the category-relevant classes.

In keras_convx:
- `keras_convx.training.PairwiseConsistency(model, erase_threshold=0.5, ...)` wraps any
  Functional/Sequential classifier and trains with plain `compile`/`fit` (every backend);
- `keras_convx.analysis.focus_area(model, images, threshold)` gives the maps and the focus
  fraction; `keras_convx.callbacks.FocusArea` logs it per epoch.

The task (generated here, no download): 32×32 "scenes" made of a 4×4 grid of textured
patches (12 oriented gratings) under heavy noise. Each of the 6 classes owns two textures;
an image shows 2–4 patches of its class' textures at random cells and random textures
elsewhere, so the evidence is spread over several places and any one patch is unreliable
under the noise. The same small CNN (3 conv-BN-ReLU blocks, global average pooling, dense)
is trained plainly, with the erased view only (β = 1, λ = 0), and with the full scheme
(β = 1, λ = 1); we compare test accuracy and the focus area (τ = 0.2, 0.5) over seeds.

Run: `KERAS_BACKEND=jax python guides/pairwise_consistency.py` (or tensorflow, torch; plots go to
$KERAS_CONVX_OUT, default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`). Results of a full run are in the README's
pairwise-consistency section (numbers printed by this script; nothing below is asserted).
"""

import os
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx import analysis  # noqa: E402
from keras_convx import callbacks  # noqa: E402
from keras_convx import demo  # noqa: E402
from keras_convx import training  # noqa: E402

OUT, FAST = demo.script_options(__doc__, "pairwise_consistency")
CLASSES, TEXTURES, PATCH, GRID = 6, 12, 8, 4
SIZE = PATCH * GRID
EPOCHS = 1 if FAST else 12
SEEDS = (0,) if FAST else (0, 1, 2)
N_TRAIN, N_TEST = (128, 64) if FAST else (1200, 1000)
NOISE = 0.8


def make_scenes(n, seed):
    """n scenes (n, 32, 32, 1) and labels: class c's textures are 2c and 2c + 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:PATCH, 0:PATCH].astype("float32")
    images = np.zeros((n, SIZE, SIZE, 1), "float32")
    labels = rng.integers(0, CLASSES, n).astype("int32")
    for i in range(n):
        evidence = rng.integers(2, 5)
        for j, cell in enumerate(rng.permutation(GRID * GRID)):
            texture = 2 * labels[i] + rng.integers(0, 2) if j < evidence else rng.integers(
                0, TEXTURES)
            angle = np.pi * (texture % 6) / 6
            frequency = 2 * np.pi / (2.5 if texture < 6 else 5.0)
            r, c = divmod(int(cell), GRID)
            images[i, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH, 0] = np.sin(
                frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
    images += rng.normal(0, NOISE, images.shape).astype("float32")
    return images, labels


x_train, y_train = make_scenes(N_TRAIN, seed=100)
x_test, y_test = make_scenes(N_TEST, seed=101)
x_focus = x_test[:200]  # (all of them in the fast run)
print(f"backend {keras.backend.backend()}: {len(x_train)} train / {len(x_test)} test scenes "
      f"{SIZE}×{SIZE}, {CLASSES} classes, {EPOCHS} epochs, seeds {SEEDS}")

SCHEMES = {
    "plain": None,
    "erased view only (β=1, λ=0)": dict(erased_weight=1.0, consistency_weight=0.0),
    "pairwise consistency (β=1, λ=1)": dict(erased_weight=1.0, consistency_weight=1.0),
}
if FAST:  # the smoke run keeps the two ends
    del SCHEMES["erased view only (β=1, λ=0)"]
results = {name: [] for name in SCHEMES}
curves, models = {}, {}
steps = EPOCHS * -(-len(x_train) // 32)
for seed in SEEDS:
    for name, scheme in SCHEMES.items():
        keras.utils.set_random_seed(seed)
        model = demo.plain_cnn((SIZE, SIZE, 1), CLASSES, name="scene_cnn")
        fit_model = model if scheme is None else training.PairwiseConsistency(
            model, erase_threshold=0.5, **scheme)
        fit_model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3,
                                                                                      steps)),
                          "sparse_categorical_crossentropy", metrics=["accuracy"])
        focus = callbacks.FocusArea(x_focus, thresholds=(0.2, 0.5))
        start = time.time()
        history = fit_model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0,
                                validation_data=(x_test, y_test), callbacks=[focus])
        seconds = time.time() - start
        accuracy = float(fit_model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
        area = {t: float(analysis.focus_area(model, x_focus, t)["focus_area"].mean())
                for t in (0.2, 0.5)}
        results[name].append({"accuracy": accuracy, "area": area, "seconds": seconds})
        if seed == SEEDS[0]:
            curves[name] = history.history
            models[name] = model
        print(f"seed {seed} {name:<32} test accuracy {accuracy:.3f}  focus area τ=0.2 "
              f"{area[0.2]:.3f}  τ=0.5 {area[0.5]:.3f}  ({seconds:.1f} s)")

print("\nmean over seeds (± std):")
for name, runs in results.items():
    def stat(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    print(f"{name:<32} accuracy {stat([r['accuracy'] for r in runs])}  focus area τ=0.2 "
          f"{stat([r['area'][0.2] for r in runs])}  τ=0.5 {stat([r['area'][0.5] for r in runs])}"
          f"  {np.mean([r['seconds'] for r in runs]):.1f} s")

# Plots ---------------------------------------------------------------------------------------
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for index, (name, history) in enumerate(curves.items()):
    axes[0].plot(history["val_accuracy"], color=f"C{index}", label=name)
    axes[1].plot(history["focus_area/0.5"], color=f"C{index}", label=f"{name}, τ=0.5")
    axes[1].plot(history["focus_area/0.2"], "--", color=f"C{index}", label=f"{name}, τ=0.2")
axes[0].set(xlabel="epoch", ylabel="test accuracy", title=f"accuracy (seed {SEEDS[0]})")
axes[1].set(xlabel="epoch", ylabel="focus area", ylim=(0, 1),
            title="focus area on 200 test scenes")
axes[0].legend(fontsize=7)
axes[1].legend(fontsize=6)
fig.tight_layout()
path = os.path.join(OUT, "pairwise_consistency.png")
fig.savefig(path, dpi=110)
plt.close(fig)

shown = 6
fig, axes = plt.subplots(1 + len(models), shown, figsize=(1.7 * shown, 1.8 * (1 + len(models))))
for col in range(shown):
    axes[0, col].imshow(x_test[col, ..., 0], cmap="gray")
    axes[0, col].set_title(f"class {y_test[col]}", fontsize=7)
for row, (name, model) in enumerate(models.items(), start=1):
    result = analysis.focus_area(model, x_test[:shown], threshold=0.5)
    for col in range(shown):
        axes[row, col].imshow(result["maps"][col], cmap="jet", vmin=0, vmax=1)
        axes[row, col].contour(result["maps"][col], levels=[0.5], colors="w", linewidths=0.7)
        label = {"plain": "plain", "erased view only": "erase only"}.get(name.split(" (")[0],
                                                                         "pairwise")
        axes[row, col].set_title(f"{label}: area {result['focus_area'][col]:.2f}", fontsize=7)
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
maps_path = os.path.join(OUT, "pairwise_consistency_maps.png")
fig.savefig(maps_path, dpi=110)
print(f"wrote {path} and {maps_path}")
