"""One process of a multi-process training run, or the single-process reference.

`python -m tests.multi_process --out DIR [--world 2 --rank R --addresses A,B] [--groups G,H]`
trains the every-family model (tests/family_model.py; a branch of group layers per group G, H;
p4 and c8 by default)
two SGD steps on global batches of 16, with the synaptic pruning callback firing, then the
same model inside `PairwiseConsistency`, and writes DIR/rank<R>.npz (weights of both,
batch-norm statistics, masks) and DIR/rank<R>.json (losses). With --world 2 it joins the job through
`keras_convx.multi_process.initialize` and trains by the backend's own machinery:

- JAX: 2 local CPU devices per process, `keras.distribution.DataParallel` over the 4 global
  devices, each process feeding its half of every global batch;
- TensorFlow: `MultiWorkerMirroredStrategy`, a `tf.data.Dataset` of global batches;
- PyTorch: `DistributedDataParallel` (`multi_process.distributed_data_parallel`), a
  DataLoader with `DistributedSampler`.

The chief (process 0) writes DIR/model_<world>.keras (`multi_process.save_model`). With --world 1
(the reference) nothing is initialised: one process, one device, the whole global batch.
tests/test_multi_process.py launches these and compares.
"""

import argparse
import contextlib
import faulthandler
import json
import os
import sys

ARGS = argparse.ArgumentParser()
ARGS.add_argument("--out", required=True)
ARGS.add_argument("--world", type=int, default=1)
ARGS.add_argument("--rank", type=int, default=0)
ARGS.add_argument("--addresses", default="")
ARGS.add_argument("--timeout", type=float, default=120)
ARGS.add_argument("--dump-after", type=float, default=0)  # seconds; 0: never
ARGS.add_argument("--groups", default="p4,c8")  # one branch of group layers each
OPTIONS = ARGS.parse_args()
GROUPS = OPTIONS.groups.split(",")
# A process that hangs (or aborts) leaves every thread's Python stack in its log, shortly
# before the test would kill it (`--dump-after`); the tests print the logs of a process they
# had to kill.
faulthandler.enable()
if OPTIONS.dump_after > 0:
    faulthandler.dump_traceback_later(OPTIONS.dump_after)
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
LOCAL_DEVICES = 2
if BACKEND == "jax" and OPTIONS.world > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx import callbacks  # noqa: E402
from keras_convx import multi_process  # noqa: E402
from keras_convx import pruning  # noqa: E402
from keras_convx import training  # noqa: E402
from tests.family_model import BATCH  # noqa: E402
from tests.family_model import data  # noqa: E402
from tests.family_model import every_family_model  # noqa: E402

STEPS = 2


def batches(x, y):
    """What this process feeds `fit` for the global batches of (x, y)."""
    world, rank = OPTIONS.world, OPTIONS.rank
    if world == 1:
        return dict(x=x, y=y, batch_size=BATCH)
    local = BATCH // world
    if BACKEND == "jax":  # this process' rows of every global batch
        rows = np.concatenate([np.arange(b * BATCH + rank * local, b * BATCH + (rank + 1) * local)
                               for b in range(len(x) // BATCH)])
        return dict(x=x[rows], y=y[rows], batch_size=local)
    if BACKEND == "tensorflow":  # global batches; TensorFlow shards them by worker
        import tensorflow as tf  # noqa: PLC0415

        return dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    import torch  # noqa: PLC0415

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    return dict(x=torch.utils.data.DataLoader(dataset, batch_size=local, sampler=sampler))


def train(strategy, wrap=None, prune=False):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = every_family_model(GROUPS)
        trained = wrap(model) if wrap else model
        trained.compile(optimizer=keras.optimizers.SGD(0.1),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if BACKEND == "torch" and OPTIONS.world > 1:
        multi_process.distributed_data_parallel(trained)
    extra = [callbacks.SynapticPruning(pruning.ConstantSparsity(0.5, begin_step=0, frequency=1))
             ] if prune else []
    x, y = data()
    history = trained.fit(**batches(x, y), epochs=1, shuffle=False, verbose=0, callbacks=extra)
    return model, trained, history.history


def main():
    strategy = None
    if OPTIONS.world > 1:
        strategy = multi_process.initialize(OPTIONS.addresses, OPTIONS.world, OPTIONS.rank,
                                            timeout=OPTIONS.timeout)
        if BACKEND == "jax":
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    arrays, report = {}, {"process_count": multi_process.process_count(),
                          "chief": multi_process.is_chief()}
    if BACKEND == "jax":
        report["devices"] = len(keras.distribution.list_devices())
    model, _, history = train(strategy, prune=True)
    for i, w in enumerate(model.get_weights()):
        arrays[f"weights_{i}"] = w
    for group in GROUPS:
        for name in ("moving_mean", "moving_variance"):
            arrays[f"group_bn_{group}_{name}"] = keras.ops.convert_to_numpy(
                getattr(model.get_layer(f"group_bn_{group}"), name))
    arrays["mask"] = keras.ops.convert_to_numpy(model.get_layer("synaptic").mask)
    report["loss"] = history["loss"][-1]
    report["regularization"] = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses))
    multi_process.save_model(model, os.path.join(OPTIONS.out, f"model_{OPTIONS.world}.keras"))

    def wrap(inner):  # the model mixes formats: say the images'
        return training.PairwiseConsistency(inner, erase_threshold=0.5,
                                            data_format="channels_last")

    model, _, history = train(strategy, wrap=wrap)
    for i, w in enumerate(model.get_weights()):
        arrays[f"pairwise_{i}"] = w
    for key in ("loss", "erased_loss", "consistency", "erased_area"):
        report[f"pairwise_{key}"] = history[key][-1]
    stem = os.path.join(OPTIONS.out, f"world{OPTIONS.world}_rank{OPTIONS.rank}")
    np.savez(stem + ".npz", **arrays)
    with open(stem + ".json", "w") as handle:
        json.dump(report, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
