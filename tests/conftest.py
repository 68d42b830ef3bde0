import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's CPU backend compiles every op of an eager jax test and every jitted step (and
# TensorFlow's jit_compile steps): with LLVM at optimisation level 0 tests/test_group_conv.py
# took 87 s on jax instead of 119 s (2 cores). XLA's HLO passes (fusion, buffer assignment)
# are unchanged, so the tests' numbers and the temp-byte measurements are those users get;
# only the machine code is less optimised. `make bench` and `make demo` keep XLA's default
# (the suite's subprocesses, guides included, inherit this).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"KERAS_BACKEND={keras.backend.backend()} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    # free_memory=False: no full gc.collect() after every test (0.5–2 s each on a big heap,
    # most of the suite's time for cheap tests); Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def opt_in_fast_paths():
    """Allows the opt-in (slow-to-compile) fast paths for one test."""
    from keras_convx import ops

    ops.set_opt_in_fast_paths(True)
    yield
    ops.set_opt_in_fast_paths(False)
