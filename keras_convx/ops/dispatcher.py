"""The one dispatch point between the reference path and per-backend fast paths.

Every op of `keras_convx.ops` that has a faster backend-specific implementation calls
`dispatch(name, reference_fn)` and runs whatever comes back. The reference path is written
with `keras.ops` only and is always available; fast paths live in the private modules
`keras_convx.ops._jax`, `keras_convx.ops._tensorflow` and `keras_convx.ops._torch`, which
are imported lazily, the first time an op asks for a fast path on that backend. No other
module of keras_convx imports jax, tensorflow or torch.

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
"""

import contextlib
import importlib
import os

import keras

_BACKEND_MODULES = {
    "jax": "keras_convx.ops._jax",
    "tensorflow": "keras_convx.ops._tensorflow",
    "torch": "keras_convx.ops._torch",
}
_ENV_FLAG = "KERAS_CONVX_REFERENCE"
_state = {"reference_only": os.environ.get(_ENV_FLAG, "0").lower() in ("1", "true", "yes")}
_loaded = {}


def reference_only():
    """Returns True when every op is forced onto its `keras.ops` reference path."""
    return _state["reference_only"]


def set_reference_only(flag):
    """Force (`True`) or release (`False`) the reference path for every op.

    Args:
        flag: bool.
    """
    if not isinstance(flag, bool):
        raise TypeError(f"Expected flag to be a bool. Received: flag={flag!r}")
    _state["reference_only"] = flag


@contextlib.contextmanager
def reference_mode(flag=True):
    """Context manager forcing (or, with `flag=False`, releasing) the reference path."""
    previous = _state["reference_only"]
    set_reference_only(flag)
    try:
        yield
    finally:
        _state["reference_only"] = previous


def _fast_paths(backend):
    if backend not in _loaded:
        module_name = _BACKEND_MODULES.get(backend)
        _loaded[backend] = (
            importlib.import_module(module_name).FAST_PATHS if module_name else {}
        )
    return _loaded[backend]


def fast_path(name, backend=None):
    """Returns the fast implementation of op `name` for `backend`, or None.

    Args:
        name: str, the op's name (as registered by the backend module).
        backend: str or None; defaults to `keras.backend.backend()`.
    """
    return _fast_paths(backend or keras.backend.backend()).get(name)


def available_fast_paths(backend=None):
    """Sorted names of the ops that have a fast path on `backend` (default: current)."""
    return sorted(_fast_paths(backend or keras.backend.backend()))


def dispatch(name, reference):
    """Returns the implementation of op `name` to run now.

    The fast path of the current backend when one is registered and the reference path is
    not forced; otherwise `reference` (a `keras.ops` implementation with the same
    signature).
    """
    if _state["reference_only"]:
        return reference
    fast = fast_path(name)
    return reference if fast is None else fast


def register_fast_path(table):
    """Decorator factory used by the backend modules: `@register_fast_path(FAST_PATHS)`.

    The function is stored under its `__name__` (the op's name).
    """

    def decorator(fn):
        table[fn.__name__] = fn
        return fn

    return decorator
