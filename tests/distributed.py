"""Data-parallel training of every layer family on 4 virtual CPU devices, against the same
training on one device with the same global batch.

Run in a process of its own (the device count is fixed when the backend starts):
`KERAS_BACKEND=jax python -m tests.distributed` (JAX: `keras.distribution.DataParallel` on
`--xla_force_host_platform_device_count=4`) or `KERAS_BACKEND=tensorflow ...`
(`tf.distribute.MirroredStrategy` over 4 logical CPUs). Prints one JSON line:
{check name: largest |distributed − single| or a bool}. `tests/test_distribution.py` runs it
and asserts on the result.
"""

import contextlib
import json
import os
import sys

DEVICES = 4
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={DEVICES}")

import numpy as np  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf  # noqa: E402

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)

import keras  # noqa: E402

from keras_convx import callbacks  # noqa: E402
from keras_convx import pruning  # noqa: E402
from keras_convx import training  # noqa: E402
from tests.family_model import BATCH  # noqa: E402  (global batch: 4 per device)
from tests.family_model import data  # noqa: E402
from tests.family_model import every_family_model as family_model  # noqa: E402


def every_family_model():
    """The every-family model with c8 group layers (steered kernels off the 90° grid)."""
    return family_model("c8")


_STRATEGY = {}


# ModelParallel (JAX): the output-channel axis of the larger kernels, the shared basis and
# the synaptic masks split over a "model" mesh axis; the batch over the other.
# (LayoutMap keys are full-match regexes on variable paths.)
MODEL_PARALLEL_LAYOUT = {
    "log_polar_conv2d[_0-9]*/kernel": (None, None, None, "model"),
    ".*/basis/kernel": (None, None, None, "model"),
    "diffusion_conv2d[_0-9]*/kernel": (None, None, None, "model"),
    "synaptic/direction": (None, None, None, "model"),
    "synaptic/(strength|mask)": (None, "model"),
}


def model_parallel():
    mesh = keras.distribution.DeviceMesh((2, DEVICES // 2), ["batch", "model"],
                                         devices=keras.distribution.list_devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    for path, axes in MODEL_PARALLEL_LAYOUT.items():
        layout_map[path] = axes
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def scope(mode="data"):
    """The distribution scope of this backend (build and compile inside it)."""
    if BACKEND == "jax":
        keras.distribution.set_distribution(
            model_parallel() if mode == "model" else
            keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
        return contextlib.nullcontext()
    if BACKEND == "tensorflow":
        if "strategy" not in _STRATEGY:  # one strategy per process
            _STRATEGY["strategy"] = tf.distribute.MirroredStrategy(
                [f"/cpu:{i}" for i in range(DEVICES)])
        return _STRATEGY["strategy"].scope()
    raise SystemExit(f"no distribution set-up for {BACKEND}")


def train(build, weights, mode=None, wrap=None, prune=False):
    """Two SGD steps (global batch 16) from `weights`; returns the trained model.

    `mode`: None (one device), "data" (data parallel) or "model" (JAX ModelParallel)."""
    if mode not in (None, "data", "model"):
        raise ValueError(f"Expected mode to be None, 'data' or 'model'. Received: mode={mode!r}")
    context = scope(mode) if mode else contextlib.nullcontext()
    with context:
        model = build()
        model.set_weights(weights)
        trained = wrap(model) if wrap else model
        trained.compile(optimizer=keras.optimizers.SGD(0.1),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = data()
        extra = []
        if prune:
            extra = [callbacks.SynapticPruning(
                pruning.ConstantSparsity(0.5, begin_step=0, frequency=1))]
        history = trained.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                              callbacks=extra)
    if BACKEND == "jax":
        keras.distribution.set_distribution(None)
    return model, history.history


def largest_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(a.get_weights(), b.get_weights()))


def main():
    keras.utils.set_random_seed(0)
    weights = every_family_model().get_weights()
    report = {"devices": len(keras.distribution.list_devices()) if BACKEND == "jax"
              else len(tf.config.list_logical_devices("CPU"))}

    single, h1 = train(every_family_model, weights, prune=True)
    parallel, h2 = train(every_family_model, weights, mode="data", prune=True)
    report["weights"] = largest_difference(single, parallel)
    report["loss"] = abs(h1["loss"][-1] - h2["loss"][-1])
    bases = [v for v in parallel.weights if v.path.endswith("basis/kernel")]
    report["basis_variables"] = len(bases)
    mask = keras.ops.convert_to_numpy(parallel.get_layer("synaptic").mask)
    report["mask_sparsity"] = float(np.mean(mask == 0))
    report["masks"] = float(np.max(np.abs(
        mask - keras.ops.convert_to_numpy(single.get_layer("synaptic").mask))))
    if BACKEND == "jax":
        value = parallel.get_layer("synaptic").mask.value
        report["mask_replicated"] = bool(value.sharding.is_fully_replicated)
        sharded, _ = train(every_family_model, weights, mode="model", prune=True)
        report["model_parallel_weights"] = largest_difference(single, sharded)
        report["model_parallel_sharded"] = sorted(
            v.path for v in sharded.weights if not v.value.sharding.is_fully_replicated)
    bn_single, bn_parallel = single.get_layer("group_bn_c8"), parallel.get_layer("group_bn_c8")
    report["group_bn_statistics"] = max(
        float(np.max(np.abs(keras.ops.convert_to_numpy(getattr(bn_single, name))
                            - keras.ops.convert_to_numpy(getattr(bn_parallel, name)))))
        for name in ("moving_mean", "moving_variance"))
    report["regularization"] = abs(float(sum(keras.ops.convert_to_numpy(v)
                                             for v in single.losses))
                                   - float(sum(keras.ops.convert_to_numpy(v)
                                               for v in parallel.losses)))

    def wrap(model):
        # The model mixes formats (its group layers are channels_first): say the images'.
        return training.PairwiseConsistency(model, erase_threshold=0.5, data_format="channels_last")

    single, h1 = train(every_family_model, weights, wrap=wrap)
    parallel, h2 = train(every_family_model, weights, mode="data", wrap=wrap)
    report["pairwise_weights"] = largest_difference(single, parallel)
    report["pairwise_terms"] = max(abs(h1[k][-1] - h2[k][-1])
                                   for k in ("loss", "erased_loss", "consistency", "erased_area"))
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
