"""Cross-backend portability: `.keras` and `.weights.h5` files written under each other backend
load under this one and reproduce the writer's inference outputs (every layer family and the
pairwise-consistency wrapper). Over the three backends' runs this covers all six ordered
pairs; the files are written by `tests/portability.py` in a subprocess per backend, once per
source tree (shared by the matrix's backend runs)."""

import fcntl
import glob
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import keras_convx  # noqa: F401  (registers the classes the files name)
from tests import harness
from tests import portability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHERS = [b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend()]


def _source_key():
    """Hash of everything the written files depend on: the library's and the writer's
    sources and the Keras version (a changed tree never reuses old files)."""
    digest = hashlib.sha256(keras.__version__.encode())
    for path in sorted(glob.glob(os.path.join(ROOT, "keras_convx", "**", "*.py"), recursive=True)
                       + [os.path.join(ROOT, "tests", "portability.py")]):
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    return digest.hexdigest()[:16]


def _write_once(backend):
    """The files written under `backend`, written by ONE subprocess per source tree: the
    matrix's three backend runs (two of them at once) share them through a folder in the
    temp dir, under a lock, instead of writing every backend's files twice."""
    folder = os.path.join(tempfile.gettempdir(), "keras_convx_portability", _source_key(), backend)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other backend's run waits here, then reuses
        done = os.path.join(folder, "done")
        if not os.path.exists(done):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            proc = subprocess.run([sys.executable, "-m", "tests.portability", folder], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"writer under {backend} failed:\n{proc.stderr[-3000:]}"
            open(done, "w").close()
    return pathlib.Path(folder)


@pytest.fixture(scope="module")
def written():
    return {backend: _write_once(backend) for backend in OTHERS}


def _check(model, folder, name):
    data = np.load(folder / f"{name}.npz")
    got = harness.to_numpy(model(data["x"], training=False))
    np.testing.assert_allclose(got, data["y"], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", portability.FAMILIES)
@pytest.mark.parametrize("writer", OTHERS)
def test_keras_file_from_another_backend(written, writer, name):
    model = keras.models.load_model(written[writer] / f"{name}.keras")
    _check(model, written[writer], name)


# (writer, model) of the compiled runs on each reader: across the matrix every writer's
# every compiled model runs compiled once, and each reader compiles each model once, not once
# per writer (35-50 s per model on torch; the model is the same whatever wrote the file, and
# every writer's every file loads and predicts in the test above). Each reader runs a file
# written on torch, whose saved optimizer must be compiled again (below), and one not.
_COMPILED_PAIRS = {"tensorflow": [("jax", "all"), ("torch", "pairwise")],
                   "jax": [("torch", "all"), ("tensorflow", "pairwise")],
                   "torch": [("tensorflow", "all"), ("jax", "pairwise")]}


def test_compiled_pairs_cover_every_writer_and_model():
    pairs = {(writer, name, reader) for reader, chosen in _COMPILED_PAIRS.items()
             for writer, name in chosen}
    assert all(writer != reader for writer, _, reader in pairs)
    assert {(w, n) for w, n, _ in pairs} == {(w, n) for w in _COMPILED_PAIRS
                                             for n in portability.COMPILED}
    assert all(sorted(n for _, n in chosen) == sorted(portability.COMPILED)
               for chosen in _COMPILED_PAIRS.values())


@pytest.mark.parametrize(("writer", "name"), _COMPILED_PAIRS[keras.backend.backend()])
def test_compiled_keras_file_from_another_backend_runs_compiled(written, writer, name):
    """Every file was saved compiled with jit_compile=True; the all-families model and the
    wrapper load compiled here and their compiled predict and train steps run (torch.compile
    on PyTorch, XLA elsewhere)."""
    model = keras.models.load_model(written[writer] / f"{name}.keras")
    assert model.compiled and model.jit_compile is True
    data = np.load(written[writer] / f"{name}.npz")
    np.testing.assert_allclose(model.predict(data["x"], verbose=0), data["y"], rtol=1e-4,
                               atol=2e-5)
    target = (np.zeros(len(data["x"]), "int32") if name == "pairwise"
              else np.zeros_like(data["y"]))
    if writer == "torch":
        # Keras limitation (3.15): a file compiled on torch names the torch-only optimizer
        # class (keras.src.backend.torch.optimizers.torch_sgd.SGD), which cannot update
        # another backend's variables; predict works, training needs a compile here.
        assert "torch" in type(model.optimizer).__module__
        portability.compile_for_files(model, name)
    assert np.all(np.isfinite(model.train_on_batch(data["x"], target)))


@pytest.mark.parametrize("name", portability.FAMILIES)
@pytest.mark.parametrize("writer", OTHERS)
def test_weights_file_from_another_backend(written, writer, name):
    model = portability.build(name)
    model.load_weights(written[writer] / f"{name}.weights.h5")
    _check(model, written[writer], name)
