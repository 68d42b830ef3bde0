"""Rotated digits: how much does a plain CNN lose when the test digits are rotated?

The data every keras_convx example and guide starts from: scikit-learn's bundled digits,
upsampled to 32×32 (`keras_convx.demo.load_digits_data`). We train the demo's plain-CNN
baseline twice — on upright digits, and with random 90° rotations as augmentation — and
plot test accuracy per rotation. Augmentation buys rotation robustness with data; the
group-equivariant layers of keras_convx build it into the architecture instead.

Run: `python examples/rotated_digits.py` (writes rotated_digits.png to $KERAS_CONVX_OUT,
default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`). `KERAS_CONVX_FAST=1` shrinks it to a smoke run.
"""

import os

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx.demo import ROTATIONS, fast_mode, script_options, load_digits_data, plain_cnn, rotate  # noqa: E402

OUT, _ = script_options(__doc__, "rotated_digits")
EPOCHS = 1 if fast_mode() else 10
x_train, y_train, x_test, y_test = load_digits_data(limit=300 if fast_mode() else None)

rng = np.random.default_rng(0)
x_aug = np.concatenate([rotate(x_train, d) for d in ROTATIONS])
y_aug = np.tile(y_train, len(ROTATIONS))
keep = rng.permutation(len(x_aug))[: len(x_train)]  # same number of samples per epoch

results = {}
for name, (x, y) in {"upright": (x_train, y_train), "rot90-augmented": (x_aug[keep], y_aug[keep])}.items():
    keras.utils.set_random_seed(0)
    model = plain_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=EPOCHS, batch_size=32, verbose=2)
    results[name] = [model.evaluate(rotate(x_test, d), y_test, verbose=0)[1] for d in ROTATIONS]
    print(name, " ".join(f"{d}°: {a:.3f}" for d, a in zip(ROTATIONS, results[name])))

fig, ax = plt.subplots(figsize=(6, 3.5))
for i, (name, acc) in enumerate(results.items()):
    ax.bar(np.arange(4) + 0.4 * i, acc, 0.4, label=name)
ax.set_xticks(np.arange(4) + 0.2)
ax.set_xticklabels([f"{d}°" for d in ROTATIONS])
ax.set(ylabel="test accuracy", ylim=(0, 1), title=f"plain CNN on rotated digits ({keras.backend.backend()})")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "rotated_digits.png"), dpi=100)
print("wrote", os.path.join(OUT, "rotated_digits.png"))
