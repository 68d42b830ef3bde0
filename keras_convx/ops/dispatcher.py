"""The one dispatch point between the reference path and per-backend fast paths.

Every op of `keras_convx.ops` that has a faster backend-specific implementation calls
`dispatch(name, reference_fn)` and runs whatever comes back. The reference path is written
with `keras.ops` only and is always available; fast paths live in the private modules
`keras_convx.ops._jax`, `keras_convx.ops._tensorflow` and `keras_convx.ops._torch` (and the
modules they load: `_jax_e4`, `_tensorflow_e4`, `_torch_e4`; `_pallas` only when asked for).
The active backend's module is imported with `keras_convx.ops` (an import at an op's first
call could fall inside a torch.compile trace, where it breaks the graph), except under
`KERAS_CONVX_REFERENCE=1`; another backend's, the first time an op asks for it. Outside
`keras_convx.ops`, no module of keras_convx imports jax, tensorflow or torch.

Forcing the reference path (for tests and debugging):

- set the environment variable `KERAS_CONVX_REFERENCE=1` before the first call, or
- call `keras_convx.ops.set_reference_only(True)`, or
- use the context manager:

```python
with keras_convx.ops.reference_mode():
    y = layer(x)        # every keras_convx op takes its keras.ops reference path
```

The choice is made when the op is called (for compiled functions: when they are traced), so
switch before tracing a `jit`-compiled function, not inside it.

Portable mode (used by `keras_convx.export`): backend fast paths (XLA functions on
TensorFlow, compiled functions on PyTorch) and gathers are what exporters cannot trace, so

```python
with keras_convx.ops.portable_mode():
    model.export("model.onnx", format="onnx")   # traced with plain keras.ops forms only
```

takes the generic `keras.ops` form of every op (the fast `keras.ops` forms, not the slow
references) and writes static gathers as one-hot products. `export.to_onnx` / `to_litert`
do this for you.

Opt-in fast paths: a fast path whose compilation costs tens of seconds per input shape
(torch.compile on CPU) pays off only in long runs, and one that was measured no faster than
the default where it runs (the Pallas kernels on a jax GPU), so they are used only after
`keras_convx.ops.set_opt_in_fast_paths(True)` or with `KERAS_CONVX_OPT_IN=1`.
"""

import contextlib
import importlib
import os

import keras
import numpy as np

from keras_convx import arguments

_BACKEND_MODULES = {
    "jax": "keras_convx.ops._jax",
    "tensorflow": "keras_convx.ops._tensorflow",
    "torch": "keras_convx.ops._torch",
}
_ENV_FLAG = "KERAS_CONVX_REFERENCE"
_ENV_OPT_IN = "KERAS_CONVX_OPT_IN"


def _env_true(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


_state = {"reference_only": _env_true(_ENV_FLAG), "opt_in": _env_true(_ENV_OPT_IN),
          "portable": False}
_loaded = {}


def _set(key, flag):
    flag = arguments.boolean("flag", flag)
    _state[key] = flag


def reference_only():
    """Returns True when every op is forced onto its `keras.ops` reference path.

    Example:

    >>> with keras_convx.ops.reference_mode(False):    # released (as by default)
    ...     print(keras_convx.ops.reference_only())
    False
    """
    return _state["reference_only"]


def set_reference_only(flag):
    """Force (`True`) or release (`False`) the reference path for every op.

    Args:
        flag: bool.

    Example:

    >>> before = keras_convx.ops.reference_only()
    >>> keras_convx.ops.set_reference_only(True)   # every op on its keras.ops reference path
    >>> keras_convx.ops.reference_only()
    True
    >>> keras_convx.ops.set_reference_only(before)
    """
    _set("reference_only", flag)


@contextlib.contextmanager
def reference_mode(flag=True):
    """Context manager forcing (or, with `flag=False`, releasing) the reference path.

    Example:

    >>> with keras_convx.ops.reference_mode():
    ...     print(keras_convx.ops.reference_only())
    True
    """
    previous = _state["reference_only"]
    set_reference_only(flag)
    try:
        yield
    finally:
        _state["reference_only"] = previous


def portable():
    """Returns True inside `portable_mode()` (export-friendly forms of every op)."""
    return _state["portable"]


@contextlib.contextmanager
def portable_mode(flag=True):
    """Context manager: no backend fast paths, static gathers as one-hot products — the forms
    ONNX and LiteRT exporters trace on every backend. Switch it on before tracing.

    Example:

    >>> layer = keras_convx.layers.GroupConv2D(2, 3, group="c8")
    >>> with keras_convx.ops.portable_mode():
    ...     y = layer(np.zeros((1, 8, 8, 16), "float32"))  # keras.ops forms, as exported
    >>> tuple(y.shape)
    (1, 8, 8, 16)
    """
    flag = arguments.boolean("flag", flag)
    previous = _state["portable"]
    _state["portable"] = flag
    try:
        yield
    finally:
        _state["portable"] = previous


def opt_in_fast_paths():
    """Returns True when opt-in (slow-to-compile) fast paths may be used.

    Example:

    >>> keras_convx.ops.opt_in_fast_paths()   # False unless KERAS_CONVX_OPT_IN=1 or set
    False
    """
    return _state["opt_in"]


def set_opt_in_fast_paths(flag):
    """Allow (`True`) or forbid (`False`, the default) opt-in fast paths.

    Args:
        flag: bool.

    Example:

    >>> before = keras_convx.ops.opt_in_fast_paths()
    >>> keras_convx.ops.set_opt_in_fast_paths(True)
    >>> keras_convx.ops.opt_in_fast_paths()
    True
    >>> keras_convx.ops.set_opt_in_fast_paths(before)
    """
    _set("opt_in", flag)


def _backend_module(backend):
    if backend not in _loaded:
        module_name = _BACKEND_MODULES.get(backend)
        _loaded[backend] = importlib.import_module(module_name) if module_name else None
    return _loaded[backend]


def _fast_paths(backend):
    module = _backend_module(backend)
    return module.FAST_PATHS if module is not None else {}


def backend_query(name, default, backend=None, args=()):
    """The backend's answer to a question about its runtime state, or `default`.

    Not an op and not a fast path: the backend module's `QUERIES[name]()` (e.g.
    `"replicas_in_sync"`, the replica count under `tf.distribute`), asked whatever the
    reference or portable mode, because it reports state rather than computing.

    Args:
        name: str, the query's name.
        default: returned when the backend has no such query.
        backend: str or None; defaults to `keras.backend.backend()`.
        args: tuple, passed to the query (e.g. the tensor `"traced"` asks about).
    """
    module = _backend_module(backend or keras.backend.backend())
    query = getattr(module, "QUERIES", {}).get(name) if module is not None else None
    return default if query is None else query(*args)


def concrete_value(x):
    """The NumPy value of `x` when it is known now, else None.

    Known: a NumPy array or an eager tensor. Unknown: a symbolic `keras.KerasTensor`, or a
    tensor being traced (by `jax.jit`, `tf.function` or `torch.compile`; the backend's
    `"traced"` query says). Lets a layer check data-dependent input (e.g. index ranges)
    where it can, and skip the check, never the work, where it cannot.
    """
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor) or backend_query("traced", False, args=(x,)):
        return None
    return np.asarray(keras.ops.convert_to_numpy(x))


def fast_path(name, backend=None):
    """Returns the fast implementation of op `name` for `backend`, or None.

    Args:
        name: str, the op's name (as registered by the backend module).
        backend: str or None; defaults to `keras.backend.backend()`.
    """
    entry = _fast_paths(backend or keras.backend.backend()).get(name)
    if entry is None or (entry.opt_in and not _state["opt_in"]):
        return None
    if _state["portable"] and not entry.portable:
        return None
    return entry


def available_fast_paths(backend=None):
    """Sorted names of the ops that have a usable fast path on `backend` (default: current).

    Example:

    >>> "e4_apply" in keras_convx.ops.available_fast_paths()   # on every backend's CPU
    True
    """
    return sorted(n for n in _fast_paths(backend or keras.backend.backend()) if fast_path(n, backend))


def dispatch(name, reference):
    """Returns the implementation of op `name` to run now.

    The fast path of the current backend when one is registered and the reference path is
    not forced; otherwise `reference` (a `keras.ops` implementation with the same
    signature).

    Example:

    >>> def reference(x):
    ...     return x + 1
    >>> keras_convx.ops.dispatch("no_such_op", reference) is reference   # no fast path
    True
    """
    if _state["reference_only"]:
        return reference
    fast = fast_path(name)
    return reference if fast is None else fast


def register_fast_path(table, opt_in=False, portable=False):
    """Decorator factory used by the backend modules: `@register_fast_path(FAST_PATHS)`.

    The function is stored under its `__name__` (the op's name). With `opt_in=True` it is
    used only while `opt_in_fast_paths()` is True. With `portable=True` it is also used in
    `portable_mode()`: a form the exporters trace better than the reference (e.g. jax's
    `lax.slice`, which stays a slice where `jnp` indexing of a symbolic shape becomes a
    gather).
    """

    def decorator(fn):
        fn.opt_in = opt_in
        fn.portable = portable
        table[fn.__name__] = fn
        return fn

    return decorator
