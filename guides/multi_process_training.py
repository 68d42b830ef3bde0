"""# Multi-process training: one process per host, each engine's own launcher

When a model outgrows one machine, you run one training process per host and the engine
keeps them in step. keras_convx does not distribute anything itself: it joins the job with
the engine's own call and leaves the training to it.

- JAX: `jax.distributed` (through `keras_convx.multi_process.initialize`), then
  `keras.distribution.DataParallel` over every process' devices.
- TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy`, configured from `TF_CONFIG`.
  `initialize` writes `TF_CONFIG` and returns the strategy. It also fixes the two
  reductions that stop Keras 3.15's `fit` under this strategy (keras-team/keras#20585).
- PyTorch: `torch.distributed` (gloo on CPU, nccl on GPUs) and torch's own
  `DistributedDataParallel`. `multi_process.distributed_data_parallel(model)` sends the
  forward pass of Keras' training step through DDP and reports metrics summed over the
  processes, so `model.fit` keeps its callbacks (pruning included) and its metrics.

Each process feeds its share of every global batch:
- JAX: the process' rows, or a `tf.data` dataset that Keras shards.
- TensorFlow: a `tf.data` dataset of global batches, which TensorFlow shards.
- PyTorch: a DataLoader with torch's `DistributedSampler`.

Batch statistics cover the global batch on all three routes:
- JAX computes on global arrays anyway.
- TensorFlow and PyTorch need `GroupBatchNormalization(synchronized=True)` and
  `SharedBasisConv2D(basis_bn_synchronized=True)`.

`multi_process.save_model` must be called on every process. The chief writes the file,
which then loads on one process.

## On real hosts

The same script runs on every host. Only the addresses and the process id change. With two
hosts, 10.0.0.1 and 10.0.0.2:

```
# JAX and PyTorch: the coordinator's address (process 0's host) on every host
host 1: KERAS_BACKEND=jax python train.py --addresses 10.0.0.1:1234 --rank 0 --world 2
host 2: KERAS_BACKEND=jax python train.py --addresses 10.0.0.1:1234 --rank 1 --world 2
# TensorFlow: every worker's address, in process order (each worker listens on its own)
host 1: KERAS_BACKEND=tensorflow python train.py --addresses 10.0.0.1:1234,10.0.0.2:1234 --rank 0 --world 2
host 2: KERAS_BACKEND=tensorflow python train.py --addresses 10.0.0.1:1234,10.0.0.2:1234 --rank 1 --world 2
```

In `train.py`, `multi_process.initialize(addresses, world, rank)`. Keras'
`KERAS_DISTRIBUTION_JOB_ADDRESSES` / `..._NUM_PROCESSES` / `..._PROCESS_ID` environment
variables work instead of arguments. Changes from localhost:
- the ports must be open between the hosts;
- on GPUs: JAX uses every local GPU; torch runs one process per GPU, each with
  `KERAS_TORCH_DEVICE=cuda:<local rank>` set before Keras starts and
  `distributed_data_parallel(model, device_ids=[local_rank])`. Under `torchrun`
  (`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint 10.0.0.1:1234 train.py`),
  `initialize()` without arguments reads its `MASTER_ADDR`/`MASTER_PORT`, `WORLD_SIZE`
  and `RANK`.

A process whose peers do not come gives up after `timeout` seconds with the engine's error.
It never hangs.

This guide runs the localhost version on the backend it is started with:
- two processes train a digits classifier with a layer of every family, pruned during the
  run;
- one process trains the same model on the same global batches;
- a control is single-process training again, from weights perturbed by one part in 10⁷.

The two-process training must stay as close to the single-process one as that float32
rounding control does.

Run: `KERAS_BACKEND=torch python guides/multi_process_training.py` (or jax, tensorflow;
`--out DIR`, `--fast`, `--help`). Plot in $KERAS_CONVX_OUT, default a folder under the
system temp dir.
"""

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np

from keras_convx import callbacks
from keras_convx import demo
from keras_convx import layers
from keras_convx import multi_process
from keras_convx import pruning

WORKER = [("--world", dict(type=int, default=0, help="internal: processes in the job")),
          ("--rank", dict(type=int, default=0, help="internal: this process' id")),
          ("--addresses", dict(default="", help="internal: job_addresses"))]
OUT, FAST = demo.script_options(__doc__, "multi_process_training", extra=WORKER)
_parser = argparse.ArgumentParser(add_help=False)
for _flag, _kwargs in WORKER:
    _parser.add_argument(_flag, **_kwargs)
ARGS = _parser.parse_known_args()[0]
BACKEND = keras.backend.backend()
EPOCHS = 1 if FAST else 6
BATCH, SIZE, WORLD = 32, 16, 2


def build_model():
    """A digits classifier with a layer of every family and the synchronisation flags."""
    basis = layers.FilterBasis(8, 3, name="basis")
    layers.apply_global_orthonormal([basis], 1e-3)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.LogPolarConv2D(12, 7, rings=2, sectors=6, growth_rate=2.0, activation="relu")(inputs)
    x = layers.SharedBasisConv2D(12, basis, unique_bases=1, basis_bn_synchronized=True,
                                 activation="relu")(x)
    x = layers.DiffusionConv2D(kernel_size=3, stable=True)(x)
    x = layers.SynapticConv2D(12, 3, strides=2, padding="same", activation="relu",
                              name="synaptic")(x)
    x = layers.GroupLiftConv2D(4, 3, group="p4", padding="same")(x)
    x = layers.GroupBatchNormalization(group="p4", synchronized=True)(x)
    x = keras.layers.ReLU()(x)
    x = layers.E4Conv2D(4, 3, group="p4", reduction_ratio=1, slices=2)(x)
    x = layers.GroupPooling(group="p4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="every_family_digits")


class StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def feed(x, y, world, rank):
    """What this process gives `fit`: its share of every global batch."""
    if world == 1:
        return dict(x=x, y=y, batch_size=BATCH)
    local = BATCH // world
    if BACKEND == "jax":
        rows = (np.arange(len(x)) % BATCH) // local == rank
        return dict(x=x[rows], y=y[rows], batch_size=local)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    import torch

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    return dict(x=torch.utils.data.DataLoader(dataset, batch_size=local, sampler=sampler))


def train(strategy, data, world, rank, noise=0.0):
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model()
        if noise:
            rng = np.random.default_rng(1)
            model.set_weights([w * (1 + noise * rng.standard_normal(w.shape)).astype(w.dtype)
                               for w in model.get_weights()])
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if BACKEND == "torch" and world > 1:
        multi_process.distributed_data_parallel(model)
    steps = EPOCHS * (len(x_train) // BATCH)
    prune = callbacks.SynapticPruning(pruning.PolynomialDecay(
        0.0, 0.5, begin_step=0, end_step=max(steps // 2, 1), frequency=max(steps // 8, 1)))
    losses = StepLosses()
    start = time.perf_counter()
    model.fit(**feed(x_train, y_train, world, rank), epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[losses, prune])
    seconds = time.perf_counter() - start
    record = {"losses": losses.losses, "seconds": seconds,
              "sparsity": pruning.sparsity(model)["total"]}
    if world == 1:  # the job's model is tested from its checkpoint, on one process
        record["accuracy"] = accuracy(model, x_test, y_test)
    return model, record


def accuracy(model, x_test, y_test):
    logits = keras.ops.convert_to_numpy(model.predict(x_test, batch_size=BATCH, verbose=0))
    return float(np.mean(np.argmax(logits, -1) == y_test))


def digits():
    """The bundled digits, whole global batches only."""
    x_train, y_train, x_test, y_test = demo.load_digits_data(size=SIZE,
                                                             limit=256 if FAST else None)
    n_train = len(x_train) // BATCH * BATCH
    return x_train[:n_train], y_train[:n_train], x_test, y_test


def worker(world, rank, addresses):
    strategy = None
    if world > 1:
        strategy = multi_process.initialize(addresses, world, rank, timeout=120)
        if BACKEND == "jax":
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    data = digits()
    model, record = train(strategy, data, world, rank)
    weights = [keras.ops.convert_to_numpy(v) for v in model.weights]
    report = {"main": record}
    if world == 1:
        _, report["control"] = train(None, data, 1, 0, noise=1e-7)
    path = multi_process.save_model(model, os.path.join(OUT, f"model_{world}.keras"))
    report["saved"] = os.path.basename(path)
    np.savez(os.path.join(OUT, f"weights_{world}_{rank}.npz"), *weights)
    with open(os.path.join(OUT, f"report_{world}_{rank}.json"), "w") as handle:
        json.dump(report, handle)


def launch():
    """The two processes of the job and the single-process reference, on localhost."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("localhost", 0))
        b.bind(("localhost", 0))
        ports = [a.getsockname()[1], b.getsockname()[1]]
    addresses = ",".join(f"localhost:{p}" for p in (ports if BACKEND == "tensorflow"
                                                     else ports[:1]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    if BACKEND == "jax":  # 2 CPU devices per process: 4 in the job
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    base = [sys.executable, os.path.abspath(__file__), "--out", OUT] + (["--fast"] if FAST else [])
    jobs = [(WORLD, r, addresses) for r in range(WORLD)] + [(1, 0, "")]
    procs = [subprocess.Popen(base + ["--world", str(w), "--rank", str(r), "--addresses", a],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for w, r, a in jobs]
    try:
        outputs = [p.communicate(timeout=1800)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        if p.returncode:
            raise SystemExit(out[-4000:])


def main():
    launch()

    def load(world, rank):
        with open(os.path.join(OUT, f"report_{world}_{rank}.json")) as handle:
            report = json.load(handle)
        arrays = np.load(os.path.join(OUT, f"weights_{world}_{rank}.npz"))
        return report, [arrays[k] for k in sorted(arrays.files, key=lambda k: int(k[4:]))]

    (single, w1), (parallel, w2), (other, w3) = load(1, 0), load(WORLD, 0), load(WORLD, 1)
    one, two, rerun = single["main"], parallel["main"], single["control"]
    # The job's checkpoint, restored here on one process, is the model tested.
    _, _, x_test, y_test = digits()
    restored = keras.saving.load_model(os.path.join(OUT, parallel["saved"]))
    two["accuracy"] = accuracy(restored, x_test, y_test)
    norm = np.sqrt(sum(np.sum(u ** 2) for u in w1))
    relative = float(np.sqrt(sum(np.sum((u - v) ** 2) for u, v in zip(w1, w2))) / norm)
    identical = all(np.array_equal(u, v) for u, v in zip(w2, w3))
    gap_parallel = np.abs(np.subtract(two["losses"], one["losses"]))
    gap_control = np.abs(np.subtract(rerun["losses"], one["losses"]))
    print(f"backend {BACKEND}: {EPOCHS} epoch(s), global batch {BATCH}, {len(one['losses'])} "
          f"steps, 50% of the synaptic connections pruned during training\n")
    print("| training | processes | seconds | final loss | test accuracy | synaptic sparsity |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, record, n in (("one process", one, 1), ("two processes", two, WORLD),
                            ("one process, weights × (1 + 1e-7·noise)", rerun, 1)):
        print(f"| {name} | {n} | {record['seconds']:.1f} | {record['losses'][-1]:.4f} | "
              f"{record['accuracy']:.3f} | {record['sparsity']:.2f} |")
    print(f"\n‖Δweights‖ / ‖weights‖, two processes vs one: {relative:.1e}; the two processes "
          f"hold identical weights: {identical}; checkpoint written once: {parallel['saved']}")
    print(f"largest per-step loss difference from one process: two processes "
          f"{gap_parallel.max():.1e}, float32-rounding control {gap_control.max():.1e}")
    print("(The processes share this machine's two cores: the run shows the result, not a "
          "speed-up.)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(one["losses"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.plot(steps, one["losses"], label="1 process", linewidth=3, alpha=0.5)
    ax1.plot(steps, two["losses"], "--", label=f"{WORLD} processes")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("running training loss")
    ax1.set_title(f"{BACKEND}: the same training in 1 and {WORLD} processes")
    ax1.legend()
    ax2.semilogy(steps, np.maximum(gap_parallel, 1e-9), "o-", label=f"{WORLD} processes")
    ax2.semilogy(steps, np.maximum(gap_control, 1e-9), "s--",
                 label="1 process, initial weights × (1 + 1e-7·noise)")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("|loss − one-process loss|")
    ax2.legend()
    fig.tight_layout()
    path = os.path.join(OUT, "multi_process_training.png")
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")
    if not identical:
        raise SystemExit("the two processes ended with different weights")
    if gap_parallel.max() > 10 * max(gap_control.max(), 1e-6):
        raise SystemExit("two-process training departed from one-process training further "
                         "than float32 rounding explains")


if __name__ == "__main__":
    if ARGS.world:
        worker(ARGS.world, ARGS.rank, ARGS.addresses)
    else:
        main()
