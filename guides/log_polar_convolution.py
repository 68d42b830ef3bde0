"""# Log-polar space convolution: a large receptive field for few parameters

`keras_convx.layers.LogPolarConv2D` implements Su & Wen, "Log-Polar Space Convolution
Layers" (NeurIPS 2022). The k×k window around every pixel is cut into `rings` distance
levels (radii growing geometrically by `growth_rate`) × `sectors` directions; pixels of one
region are pooled and share one weight. Near the centre the regions are small (fine detail),
far from it they are large (coarse context) — like the log-polar layout of the retina.

This guide:

1. draws the region maps (`keras_convx.ops.log_polar_regions`);
2. counts parameters against dense convolutions;
3. checks that the execution paths are exact and shows which one `implementation="auto"`
   picks;
4. trains three one-layer models on a task that needs long-range context — is the pair of
   dots in the image 4 pixels apart or 7? — where a 9×9 LPSC (13 weights per channel pair)
   succeeds and a 3×3 conv (9 weights per pair) cannot, because it never sees both dots.

Run: `KERAS_BACKEND=jax python guides/log_polar_convolution.py` (or tensorflow, torch; plots go to
$KERAS_CONVX_OUT, default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`).

A full run (jax, 2-core CPU, 2026-11-25; 3,000 training / 1,000 test images, 20 epochs) gave
test accuracy 0.502 for the 3×3 conv (160 parameters: chance), 0.893 for the 9×9 LPSC
(224 parameters) and 0.999 for the dense 9×9 conv (1,312 parameters, 5.9× the LPSC).
"""

import os

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import keras_convx  # noqa: E402
from keras_convx.demo import fast_mode, script_options  # noqa: E402
from keras_convx.layers import LogPolarConv2D  # noqa: E402

OUT, FAST = script_options(__doc__, "log_polar_convolution")

# ## 1. Region maps
# Each pixel of the window gets a ring index and a sector index; region = ring·sectors + sector.
configs = [(5, 2, 6, 3.0), (9, 2, 6, 3.0), (11, 3, 8, 2.0)]
fig, axes = plt.subplots(1, len(configs), figsize=(4 * len(configs), 4))
for ax, (k, rings, sectors, g) in zip(axes, configs):
    ring, sector = keras_convx.ops.log_polar_regions(k, rings, sectors, g)
    region = ring * sectors + sector
    ax.imshow(region, cmap="nipy_spectral", vmin=-1, vmax=rings * sectors + 1, alpha=0.6)
    for (i, j), r in np.ndenumerate(region):
        ax.text(j, i, str(r), ha="center", va="center", fontsize=7)
    ax.set_title(f"{k}×{k}, rings={rings}, sectors={sectors}, g={g:g}")
    ax.axis("off")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "log_polar_regions.png"), dpi=100)
plt.close(fig)
ring, sector = keras_convx.ops.log_polar_regions(5, 2, 6, 3.0)
print("5×5 (2, 6, 3) sector map:\n", sector)

# ## 2. Parameters: C_in·C_out·(rings·sectors + 1) + bias, against C_in·C_out·k² + bias
print("\nparameters for 64 → 64 channels")
for k, rings, sectors, g in configs:
    layer = LogPolarConv2D(64, k, rings=rings, sectors=sectors, growth_rate=g)
    layer.build((None, 32, 32, 64))
    dense = keras.layers.Conv2D(64, k)
    dense.build((None, 32, 32, 64))
    print(f"  {k:>2}×{k:<2} LPSC {layer.count_params():>7,}   Conv2D {dense.count_params():>7,}"
          f"   ({dense.count_params() / layer.count_params():.1f}× fewer)")

# ## 3. Exact execution paths
# "dense" folds the regions into an ordinary k×k kernel; "pool" pools each region and mixes
# the pooled maps with a 1×1 conv. They are the same function.
x = np.random.default_rng(0).standard_normal((2, 20, 20, 8)).astype("float32")
a = LogPolarConv2D(16, 9, implementation="dense")
b = LogPolarConv2D(16, 9, implementation="pool")
a.build(x.shape)
b.build(x.shape)
b.set_weights(a.get_weights())
diff = float(np.max(np.abs(keras.ops.convert_to_numpy(a(x)) - keras.ops.convert_to_numpy(b(x)))))
print(f"\nmax |dense - pool| = {diff:.2e}")
assert diff < 1e-4
auto = LogPolarConv2D(64, 9)
auto.build((None, 32, 32, 64))
print("implementation='auto' picks", repr(auto.resolved_implementation()), "for 64→64 on",
      keras.backend.backend())


# ## 4. A task that needs long-range context
# Two bright dots on a noisy 24×24 image, 4 pixels apart (class 0) or 7 pixels apart
# (class 1), in one of 8 directions, anywhere in the image. Each model has ONE spatial layer
# (16 filters), then a 1×1 conv, global max pooling and a classifier, so what that layer's
# window can see decides the task.
def make_pairs(n, size=24, seed=0):
    rng = np.random.default_rng(seed)
    directions = np.array([(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)], float)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = rng.normal(0, 0.1, (n, size, size, 1)).astype("float32")
    y = rng.integers(0, 2, n)
    for i in range(n):
        offset = np.round(directions[rng.integers(8)] * (4 if y[i] == 0 else 7)).astype(int)
        lo = np.maximum(0, -offset)
        hi = size - np.maximum(0, offset)
        p = rng.integers(lo, hi)
        x[i, p[0], p[1], 0] += 1.0
        x[i, p[0] + offset[0], p[1] + offset[1], 0] += 1.0
    return x, y.astype("int32")


def one_layer_model(spatial):
    inputs = keras.Input((24, 24, 1))
    h = spatial(inputs)
    h = keras.layers.Conv2D(16, 1, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))


n_train, n_test, epochs = (256, 128, 1) if FAST else (3000, 1000, 20)
x_train, y_train = make_pairs(n_train, seed=1)
x_test, y_test = make_pairs(n_test, seed=2)
candidates = {
    "Conv2D 3×3": lambda: keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    "LogPolarConv2D 9×9 (2,6,3)": lambda: LogPolarConv2D(16, 9, rings=2, sectors=6, growth_rate=3.0,
                                                         activation="relu"),
    "Conv2D 9×9": lambda: keras.layers.Conv2D(16, 9, padding="same", activation="relu"),
}
results = {}
for name, spatial in candidates.items():
    keras.utils.set_random_seed(0)
    model = one_layer_model(spatial())
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=epochs,
                        batch_size=64, verbose=0)
    spatial_params = model.layers[1].count_params()
    results[name] = (spatial_params, history.history["val_accuracy"])
    print(f"{name:<28} spatial-layer params {spatial_params:>5}   test accuracy "
          f"{history.history['val_accuracy'][-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
for name, (params, acc) in results.items():
    ax.plot(np.arange(1, len(acc) + 1), acc, marker="o", label=f"{name} ({params} params)")
ax.axhline(0.5, color="gray", ls=":", label="chance")
ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0.3, 1.02),
       title=f"dots 4 vs 7 px apart ({keras.backend.backend()})")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "log_polar_long_range.png"), dpi=100)
print("wrote", os.path.join(OUT, "log_polar_regions.png"), "and log_polar_long_range.png")

if not FAST:
    # The claim, asserted: the 9×9 LPSC solves what the 3×3 conv cannot.
    assert results["LogPolarConv2D 9×9 (2,6,3)"][1][-1] > results["Conv2D 3×3"][1][-1] + 0.2
