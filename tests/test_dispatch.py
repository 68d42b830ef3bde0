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


def test_environment_switch_and_backend_module_import():
    """KERAS_CONVX_REFERENCE=1 forces the reference path and imports no backend module of
    ours; otherwise importing keras_convx imports the active backend's (and no other's), so
    that no op's first call, perhaps inside a torch.compile trace, imports it."""
    reference = (
        "import sys, keras_convx\n"
        "from keras_convx import ops\n"
        "assert ops.reference_only()\n"
        "assert not [m for m in sys.modules if m.startswith('keras_convx.ops._')], sys.modules\n"
    )
    env = dict(os.environ, KERAS_CONVX_REFERENCE="1")
    subprocess.run([sys.executable, "-c", reference], env=env, check=True)
    backend = keras.backend.backend()
    active = (
        "import sys, keras_convx\n"
        "ours = {m for m in sys.modules if m in ('keras_convx.ops._jax', "
        "'keras_convx.ops._tensorflow', 'keras_convx.ops._torch')}\n"
        f"assert ours == {{'keras_convx.ops._{backend}'}}, ours\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_CONVX_REFERENCE"}
    subprocess.run([sys.executable, "-c", active], env=env, check=True)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="a torch.compile graph break")
def test_first_fast_path_call_inside_torch_compile_is_one_graph():
    """A fresh process: a layer built symbolically (no fast path called yet), then its first
    eager-shaped call inside torch.compile(fullgraph=True). Importing the fast-path module
    there was a graph break ("import_module ... marked as skipped")."""
    code = (
        "import keras, torch\n"
        "from keras_convx import layers\n"
        "layer = layers.LogPolarConv2D(4, 5, rings=2, sectors=6, growth_rate=3.0)\n"
        "layer(keras.Input((None, None, 3)))\n"
        "f = torch.compile(lambda v: layer(v), fullgraph=True, dynamic=False, "
        "backend='aot_eager')\n"
        "f(torch.randn(2, 8, 8, 3))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_CONVX_REFERENCE"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_backend_queries():
    from keras_convx.ops import dispatcher

    assert dispatcher.backend_query("no_such_query", "fallback") == "fallback"
    assert dispatcher.backend_query("platform", None) in ("cpu", "gpu", "tpu")
    assert dispatcher.backend_query("no_such_query", 7, backend="numpy") == 7  # no module
    # Queries report state: reference and portable modes do not hide them.
    with dispatcher.reference_mode(), dispatcher.portable_mode():
        assert dispatcher.backend_query("platform", None) in ("cpu", "gpu", "tpu")



def _tensorflow_banded_cases():
    """{name: (fn, inputs)} for each tensorflow CPU path that remakes bands in its backward
    pass (forced into 2-row bands by the caller)."""
    import numpy as np  # noqa: PLC0415

    from keras_convx.layers import LogPolarConv2D  # noqa: PLC0415
    from keras_convx.ops import e4 as e4ops  # noqa: PLC0415

    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype("float32")

    k, a = 3, 4
    lpsc = LogPolarConv2D(4, 5, rings=2, sectors=6, growth_rate=3.0, implementation="pool")
    return {
        "e4_apply": (lambda x, *w: e4ops.e4_apply(x, *w, k, 1, 1e-5),
                     [normal(2, 7, 6, 8), normal(8, 8), normal(2, 1), normal(2, 1),
                      normal(9, k * k * a), normal(8, 2 * a)]),
        "generate_and_aggregate": (
            lambda v, f, b: ops.group.generate_and_aggregate(v, f, b, k, (1, 1)),
            [normal(2, 7, 6, 2, a), normal(2, 7, 6, 5), normal(5, k * k * a)]),
        "log_polar_pool_mix": (lpsc, [normal(2, 11, 10, 3)]),
    }


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tensorflow's graph mode")
@pytest.mark.parametrize("case", ["e4_apply", "generate_and_aggregate", "log_polar_pool_mix"])
def test_tensorflow_bands_remade_in_the_backward_pass_are_not_merged_with_the_forward(
        case, monkeypatch):
    """A tensorflow band loop whose backward pass remakes what its forward pass made (E4's fused
    layer, E4's tiled generation + aggregation, the log-polar pooling + mixing; 2-row bands)
    has no op in its traced training step that grappler's common subexpression elimination
    would merge with another (same op, data inputs, control inputs and attributes): merged,
    the forward pass's band tensors were kept until the backward pass (four fused E4 layers at
    64 px 98–101 → 54–61 MB, four log-polar layers 60 → 46–52 MB, when the backward's chains
    started without a control dependency on its cotangent)."""
    import tensorflow as tf  # noqa: PLC0415

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the bands are a CPU path")
    monkeypatch.setattr(ops.group, "BAND_BYTES", 64)
    fn, inputs = _tensorflow_banded_cases()[case]
    inputs = [tf.constant(t) for t in inputs]

    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            loss = tf.reduce_sum(tf.square(fn(*args)))
        gradients = tape.gradient(loss, [*args, *getattr(fn, "trainable_variables", [])])
        assert all(g is not None for g in gradients)
        return gradients

    graph = tf.function(step).get_concrete_function(*inputs).graph
    # every op's identity as grappler's CSE sees it: type, attributes, the identities of its
    # data and control inputs (constants by value); stateful ops and arguments are unique.
    # Merged ops matter where their output is band-sized (rank ≥ 3: a merged reshape or slice
    # keeps its forward input too); shapes and scalars merged are harmless.
    ids, identity, merged = {}, {}, {}
    for op in graph.get_operations():  # creation order: inputs first (else named)
        if op.type == "Placeholder" or op.op_def.is_stateful:
            key = op.name
        else:
            key = (op.type, tuple((identity.get(t.op.name, t.op.name), t.value_index)
                                  for t in op.inputs),
                   frozenset(identity.get(c.name, c.name) for c in op.control_inputs),
                   tuple(sorted((name, value.SerializeToString(deterministic=True))
                                for name, value in op.node_def.attr.items())))
        identity[op.name] = ids.setdefault(key, len(ids))
        if op.type != "Const" and any(t.shape.rank is None or t.shape.rank >= 3
                                      for t in op.outputs):
            merged.setdefault(identity[op.name], []).append(op.name)
    per_function = {}  # each band runs the same XLA-compiled function (full bands)
    for op in graph.get_operations():
        if "PartitionedCall" in op.type:
            name = op.node_def.attr["f"].func.name
            per_function[name] = per_function.get(name, 0) + 1
    assert max(per_function.values(), default=0) >= 3, per_function  # the bands ran
    assert not [names for names in merged.values() if len(names) > 1], merged
