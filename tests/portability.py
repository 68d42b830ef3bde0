"""Fixtures for the cross-backend portability matrix (tests/test_portability.py).

`python -m tests.portability OUT_DIR` (with KERAS_BACKEND set) builds one small model per layer
family with seeded random weights, and writes for each: `<name>.keras`, `<name>.weights.h5`
and `<name>.npz` (the input batch and this backend's inference outputs). The test, under every
backend, runs this writer under the two other backends and checks that their files load and
reproduce their outputs.
"""

import os
import sys

import keras
import numpy as np

SHAPE = (12, 12, 3)


def _log_polar(x):
    from keras_convx import layers

    return layers.LogPolarConv2D(6, 9, rings=2, sectors=6, growth_rate=3.0, padding="same")(x)


def _group(x):
    from keras_convx import layers

    x = layers.GroupLiftConv2D(3, 3, group="d8", padding="same", use_bias=True)(x)
    x = layers.GroupBatchNormalization(group="d8")(x)
    x = layers.GroupConv2D(2, 3, group="d8", strides=2)(x)
    x = layers.E4Conv2D(2, 3, group="d8", reduction_ratio=1, slices=2)(x)
    return layers.GroupPooling(group="d8")(x)


def _shared_basis(x):
    from keras_convx import layers

    basis = layers.FilterBasis(4, 3)
    x = keras.layers.Conv2D(6, 1)(x)  # a basis serves one input width
    x = layers.SharedBasisConv2D(6, basis, unique_bases=1)(x)
    return layers.SharedBasisConv2D(6, basis, unique_bases=1, activation="relu")(x)


def _pde(x):
    from keras_convx import layers

    x = keras.layers.Conv2D(4, 1)(x)
    x = layers.DiffusionConv2D(kernel_size=3)(x)
    return layers.HyperbolicConv2D(kernel_size=3)(x)


def _synaptic(x):
    from keras_convx import layers

    return layers.SynapticConv2D(5, 3, padding="same")(x)


BODIES = {
    "log_polar": _log_polar,
    "group": _group,
    "shared_basis": _shared_basis,
    "pde": _pde,
    "synaptic": _synaptic,
}
# Every family: the layer families above and the pairwise-consistency wrapper.
FAMILIES = (*BODIES, "pairwise")
# Files also checked compiled by the reader: every layer family in one model (one
# compilation per reader instead of one per family: torch.compile takes tens of seconds per
# graph on a 2-core CPU) and the wrapper.
COMPILED = ("all", "pairwise")


def build(name):
    """The family's model (same architecture under every backend), weights not set."""
    from keras_convx import demo
    from keras_convx import training

    if name == "pairwise":
        return training.PairwiseConsistency(demo.plain_cnn(SHAPE, 4), erase_threshold=0.4)
    inputs = keras.Input(SHAPE)
    if name == "all":
        pooled = [keras.layers.GlobalAveragePooling2D()(body(inputs)) for body in BODIES.values()]
        return keras.Model(inputs, keras.layers.Concatenate()(pooled), name=name)
    return keras.Model(inputs, BODIES[name](inputs), name=name)


def randomise(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif "mask" in variable.path:
            variable.assign((rng.uniform(size=shape) > 0.4).astype("float32"))
        elif "seed" not in variable.path and variable.dtype == "float32":
            variable.assign(rng.standard_normal(shape).astype("float32") * 0.4)


def inputs(seed=0):
    return np.random.default_rng(seed).standard_normal((3, *SHAPE)).astype("float32")


def compile_for_files(model, name):
    """Compiled with `jit_compile=True` before saving: the `.keras` file then carries that
    compile config, and the reader must load it compiled (XLA, or torch.compile on PyTorch)."""
    loss = ("sparse_categorical_crossentropy" if name == "pairwise" else "mse")
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss, jit_compile=True)


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    x = inputs()
    for index, name in enumerate((*FAMILIES, "all")):
        model = build(name)
        randomise(model, seed=index)
        compile_for_files(model, name)
        outputs = keras.ops.convert_to_numpy(model(x, training=False))
        model.save(os.path.join(out_dir, f"{name}.keras"))
        model.save_weights(os.path.join(out_dir, f"{name}.weights.h5"))
        np.savez(os.path.join(out_dir, f"{name}.npz"), x=x, y=outputs)


if __name__ == "__main__":
    write(sys.argv[1])
