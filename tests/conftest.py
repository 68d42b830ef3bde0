import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns oneDNN on by default on some x86 CPUs only; without it (seen on an
# AVX2-only AMD EPYC) its CPU Conv2D has no NCHW kernel, and a test model with a Keras
# channels_first Conv2D fails eagerly there. On, as on the machines where the suite passed
# before (the library's own layers transpose on TensorFlow: `ops.core.conv2d`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
