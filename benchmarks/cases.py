"""Benchmark cases. Each case: a layer under test and its baselines, same input.

A case is a dict: name, family, input_shape (channels_last, with batch), `layer` (factory
of the layer under test) and `baselines` ({label: factory}). Later families append cases.
"""

import keras

from keras_convx.layers import LogPolarConv2D


def conv2d(filters, k, **kw):
    return lambda: keras.layers.Conv2D(filters, k, padding="same", **kw)


def lpsc(filters, k, rings, sectors, growth_rate, implementation="auto"):
    return lambda: LogPolarConv2D(filters, k, rings=rings, sectors=sectors, growth_rate=growth_rate,
                                  implementation=implementation)


CASES = [
    {
        # The harness' noise floor: the same layer timed against itself.
        "name": "Conv2D 3×3 (noise floor)",
        "family": "harness",
        "input_shape": (16, 32, 32, 64),
        "layer": conv2d(64, 3),
        "baselines": {"Conv2D 3×3": conv2d(64, 3)},
    },
    {
        "name": "LogPolarConv2D 9×9 (2,6,3) 64→64, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 64),
        "layer": lpsc(64, 9, 2, 6, 3.0),
        "baselines": {
            "Conv2D 9×9": conv2d(64, 9),
            "Conv2D 5×5": conv2d(64, 5),
            "LPSC dense path (A)": lpsc(64, 9, 2, 6, 3.0, "dense"),
        },
    },
    {
        "name": "LogPolarConv2D 11×11 (3,8,2) 64→64, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 64),
        "layer": lpsc(64, 11, 3, 8, 2.0),
        "baselines": {
            "Conv2D 11×11": conv2d(64, 11),
            "Conv2D 5×5": conv2d(64, 5),
            "LPSC dense path (A)": lpsc(64, 11, 3, 8, 2.0, "dense"),
        },
    },
    {
        "name": "LogPolarConv2D 9×9 (2,6,3) stem 3→16, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 3),
        "layer": lpsc(16, 9, 2, 6, 3.0),
        "baselines": {
            "Conv2D 9×9": conv2d(16, 9),
            "Conv2D 3×3": conv2d(16, 3),
            "LPSC dense path (A)": lpsc(16, 9, 2, 6, 3.0, "dense"),
        },
    },
]
