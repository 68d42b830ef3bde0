"""# Getting started with keras_convx

keras_convx layers are ordinary Keras 3 layers: they run on TensorFlow, JAX and PyTorch, go
into functional and sequential models, train with `compile`/`fit` and save to `.keras`.
This guide shows the three things that are the same for every family:

1. choosing a backend (the `KERAS_BACKEND` environment variable, before `import keras`);
2. the reference path: every op with a backend-specific fast path also has a pure
   `keras.ops` implementation, and `keras_convx.ops.reference_mode()` forces it — handy
   when debugging or when comparing against a paper's formula;
3. saving and reloading a trained model, outputs identical.

Run: `KERAS_BACKEND=jax python guides/getting_started.py`.
"""

import os
import tempfile

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import keras_convx  # noqa: E402
from keras_convx.demo import fast_mode, script_options, load_digits_data, plain_cnn  # noqa: E402

OUT, _ = script_options(__doc__, "getting_started")

# ## 1. The backend
print("keras_convx", keras_convx.__version__, "on", keras.backend.backend())
print("fast paths registered on this backend:", keras_convx.ops.available_fast_paths() or "none")

# ## 2. Train a model on the bundled digits
x_train, y_train, x_test, y_test = load_digits_data(limit=300 if fast_mode() else None)
keras.utils.set_random_seed(0)
model = plain_cnn()
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x_train, y_train, validation_data=(x_test, y_test),
                    epochs=1 if fast_mode() else 6, batch_size=32, verbose=2)

# ## 3. The reference path is one context manager away
with keras_convx.ops.reference_mode():
    assert keras_convx.ops.reference_only()
    reference_predictions = model.predict(x_test, verbose=0)
fast_predictions = model.predict(x_test, verbose=0)
print("max |fast - reference|:", float(np.max(np.abs(fast_predictions - reference_predictions))))

# ## 4. Save and reload: identical outputs
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "digits.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
difference = float(np.max(np.abs(reloaded.predict(x_test, verbose=0) - fast_predictions)))
print("max |reloaded - original|:", difference)
assert difference == 0.0

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(history.history["accuracy"], label="train")
ax.plot(history.history["val_accuracy"], label="test")
ax.set(xlabel="epoch", ylabel="accuracy", title=f"digits, {keras.backend.backend()}")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "getting_started.png"), dpi=100)
print("wrote", os.path.join(OUT, "getting_started.png"))
