import os
import subprocess
import sys

import keras
import pytest

from keras_convx import ops
from keras_convx.ops import dispatcher as dispatch_module


def _reference(x):
    return ("reference", x)


def _fast(x):
    return ("fast", x)


@pytest.fixture
def fake_fast_path():
    table = dispatch_module._fast_paths(keras.backend.backend())
    dispatch_module.register_fast_path(table)(_fast)
    table["_test_op"] = table.pop("_fast")
    yield
    table.pop("_test_op")


def _slow(x):
    return ("slow-compiled", x)


def test_opt_in_fast_path_needs_the_switch():
    table = dispatch_module._fast_paths(keras.backend.backend())
    dispatch_module.register_fast_path(table, opt_in=True)(_slow)
    try:
        assert ops.dispatch("_slow", _reference)(1) == ("reference", 1)
        assert "_slow" not in ops.available_fast_paths()
        ops.set_opt_in_fast_paths(True)
        assert ops.dispatch("_slow", _reference)(1) == ("slow-compiled", 1)
    finally:
        ops.set_opt_in_fast_paths(False)
        table.pop("_slow")


def test_dispatch_prefers_fast_path(fake_fast_path):
    assert ops.dispatch("_test_op", _reference)(1) == ("fast", 1)
    assert "_test_op" in ops.available_fast_paths()


def test_reference_mode_forces_reference_and_restores(fake_fast_path):
    with ops.reference_mode():
        assert ops.reference_only()
        assert ops.dispatch("_test_op", _reference)(1) == ("reference", 1)
    assert not ops.reference_only()
    assert ops.dispatch("_test_op", _reference)(1) == ("fast", 1)


def test_unknown_op_falls_back_to_reference():
    assert ops.dispatch("_no_such_op", _reference)(2) == ("reference", 2)


def test_set_reference_only_validates():
    with pytest.raises(TypeError, match="flag"):
        ops.set_reference_only("yes")


def test_environment_switch_and_lazy_backend_import():
    """KERAS_CONVX_REFERENCE=1 forces the reference path; importing keras_convx imports no
    backend module of ours until an op asks for one."""
    code = (
        "import sys, keras_convx\n"
        "from keras_convx import ops\n"
        "assert ops.reference_only()\n"
        "assert not [m for m in sys.modules if m.startswith('keras_convx.ops._')], sys.modules\n"
    )
    env = dict(os.environ, KERAS_CONVX_REFERENCE="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_backend_queries():
    from keras_convx.ops import dispatcher

    assert dispatcher.backend_query("no_such_query", "fallback") == "fallback"
    assert dispatcher.backend_query("platform", None) in ("cpu", "gpu", "tpu")
    assert dispatcher.backend_query("no_such_query", 7, backend="numpy") == 7  # no module
    # Queries report state: reference and portable modes do not hide them.
    with dispatcher.reference_mode(), dispatcher.portable_mode():
        assert dispatcher.backend_query("platform", None) in ("cpu", "gpu", "tpu")
