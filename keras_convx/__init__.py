"""keras_convx: recent convolution ideas as backend-agnostic Keras 3 layers.

Public namespaces (explicit re-exports only):

- `keras_convx.layers`, `keras_convx.ops`, `keras_convx.applications`
- `keras_convx.regularizers`, `keras_convx.constraints`, `keras_convx.initializers`,
  `keras_convx.callbacks`
- `keras_convx.pruning` (with `keras_convx.compaction`), `keras_convx.training`,
  `keras_convx.analysis`, `keras_convx.focus`, `keras_convx.folding`,
  `keras_convx.export`, `keras_convx.fit_steps` (the optimizer step inside a callback)
"""

__version__ = "0.1.0.dev0"

from keras_convx import analysis  # noqa: E402,F401
from keras_convx import applications  # noqa: E402,F401
from keras_convx import callbacks  # noqa: E402,F401
from keras_convx import compaction  # noqa: E402,F401
from keras_convx import constraints  # noqa: E402,F401
from keras_convx import export  # noqa: E402,F401
from keras_convx import fit_steps  # noqa: E402,F401
from keras_convx import focus  # noqa: E402,F401
from keras_convx import folding  # noqa: E402,F401
from keras_convx import initializers  # noqa: E402,F401
from keras_convx import layers  # noqa: E402,F401
from keras_convx import multi_process  # noqa: E402,F401
from keras_convx import ops  # noqa: E402,F401
from keras_convx import pruning  # noqa: E402,F401
from keras_convx import regularizers  # noqa: E402,F401
from keras_convx import training  # noqa: E402,F401


def _deprecated_apply_global_orthonormal(bases, factor):
    """Deprecated: `keras_convx.layers.apply_global_orthonormal` (beside `FilterBasis`)."""
    import warnings  # noqa: PLC0415

    warnings.warn("keras_convx.regularizers.apply_global_orthonormal is deprecated: use "
                  "keras_convx.layers.apply_global_orthonormal.", DeprecationWarning, 2)
    return layers.apply_global_orthonormal(bases, factor)


# The old name, attached from the top floor (regularizers sit below the layers).
regularizers.apply_global_orthonormal = _deprecated_apply_global_orthonormal
