"""Functional, backend-agnostic maths of keras_convx.

Static tables (region maps, group permutations) are NumPy; tensor maths uses `keras.ops`;
per-backend fast paths sit behind the single dispatch point in `keras_convx.ops.dispatcher`.
"""

from keras_convx.ops.dispatcher import available_fast_paths
from keras_convx.ops.dispatcher import dispatch
from keras_convx.ops.dispatcher import opt_in_fast_paths
from keras_convx.ops.dispatcher import portable_mode
from keras_convx.ops.dispatcher import reference_mode
from keras_convx.ops.dispatcher import reference_only
from keras_convx.ops.dispatcher import set_opt_in_fast_paths
from keras_convx.ops.dispatcher import set_reference_only
from keras_convx.ops.log_polar import empty_regions as log_polar_empty_regions
from keras_convx.ops.log_polar import log_polar_regions

__all__ = [
    "available_fast_paths",
    "dispatch",
    "log_polar_empty_regions",
    "log_polar_regions",
    "opt_in_fast_paths",
    "portable_mode",
    "reference_mode",
    "reference_only",
    "set_opt_in_fast_paths",
    "set_reference_only",
]

# The active backend's fast-path module is imported with keras_convx.ops rather than at the
# first op that asks for it: that call can be inside a torch.compile trace, where an import is
# a graph break (dynamo does not trace importlib). Under KERAS_CONVX_REFERENCE=1 nothing is.
if not reference_only():
    available_fast_paths()
