"""Benchmark cases. Each case: a layer under test and its Conv2D baselines, same input.

A case is a dict: name, input_shape (channels_last, with batch), `layer` (factory of the
layer under test) and `baselines` ({label: factory}). Later families append their cases.
"""

import keras


def conv2d(filters, k, **kw):
    return lambda: keras.layers.Conv2D(filters, k, padding="same", **kw)


CASES = [
    {
        # The harness' noise floor: the same layer timed against itself.
        "name": "Conv2D 3×3 (noise floor)",
        "family": "harness",
        "input_shape": (16, 32, 32, 64),
        "layer": conv2d(64, 3),
        "baselines": {"Conv2D 3×3": conv2d(64, 3)},
    },
]
