"""Benchmark library: forward+backward timing of a layer against baselines in one process.

Every figure keras_convx publishes is a ratio against a plain `Conv2D` measured in the same
process, on the same inputs: `time_train_step` compiles (where the backend can) a function
that runs the layer forward, reduces to a scalar and takes gradients with respect to the
input and every trainable weight; it warms up, then reports the median of repeated runs.

- jax: `jax.jit` of `jax.value_and_grad` over `layer.stateless_call` (as Keras' trainer).
- tensorflow: `tf.function` (graph mode; `jit_compile=True` with `--tf-xla`) with a
  GradientTape.
- torch: eager autograd (torch.compile on CPU is not used by `model.fit` by default).

Peak memory on CPU is the largest growth of the process' resident memory during the steps
(sampled every 0.5 ms by a thread), measured in a fresh subprocess per (case, variant).
"""

import os
import inspect
import statistics
import threading
import time

import keras
import numpy as np

BACKEND = keras.backend.backend()


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_mb()
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.0005)


def grad_step(loss, inputs, tf_xla=False):
    """A zero-argument function: one forward+backward pass of the scalar `loss(*inputs)`,
    with gradients w.r.t. every input; blocks until done.

    - jax: `jax.jit` of `jax.value_and_grad` over all the inputs (what Keras' JAX trainer
      runs: the loss value is an output too, which changes what XLA keeps from the forward
      pass; for E4's aggregation alone `jax.grad` and `value_and_grad` timed 10× apart).
    - tensorflow: `tf.function` (`jit_compile=tf_xla`) with a GradientTape.
    - torch: eager autograd (synchronised with the GPU when there is one).
    """
    if BACKEND == "jax":
        import jax

        grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(inputs)))))
        values = [jax.numpy.asarray(a) for a in inputs]

        def step():
            jax.block_until_ready(grad(*values))

        return step
    if BACKEND == "tensorflow":
        import tensorflow as tf

        values = [tf.convert_to_tensor(a) for a in inputs]

        @tf.function(jit_compile=tf_xla)
        def grad(*vals):
            with tf.GradientTape() as tape:
                tape.watch(vals)
                value = loss(*vals)
            return tape.gradient(value, list(vals))

        def step():
            _ = [o.numpy() for o in grad(*values)[:1]]

        return step
    if BACKEND == "torch":
        import torch

        # keras' conversion places the tensors where the backend computes (the GPU if any).
        values = [keras.ops.convert_to_tensor(a).detach().clone().requires_grad_(True) for a in inputs]

        def step():
            torch.autograd.grad(loss(*values), values)
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        return step
    raise RuntimeError(f"unsupported backend {BACKEND}")


def make_step(layer, x, tf_xla=False):
    """A zero-argument function running one forward+backward pass of `layer` (gradients
    w.r.t. the input and every trainable weight); blocks until done."""
    layer.build(x.shape) if not layer.built else None
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    # A training step: layers that take `training` (batch norm inside) get training=True.
    kwargs = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}

    def loss(x_, *tv):
        y, _ = layer.stateless_call(list(tv), non_trainable, x_, **kwargs)
        return keras.ops.mean(keras.ops.square(keras.ops.cast(y, "float32")))

    return grad_step(loss, [x, *trainable], tf_xla=tf_xla)


def time_step(step, warmup=3, repeats=15, min_seconds=None):
    """Median wall time (ms) of `step()` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_layers(factories, input_shape, warmup=3, repeats=15, seed=0, tf_xla=False):
    """{name: median ms} for each `name -> layer factory`, same input, interleaved rounds.

    Rounds alternate between the layers so slow drift of the machine hits all of them alike.
    """
    x = np.random.default_rng(seed).standard_normal(input_shape).astype("float32")
    steps = {name: make_step(factory(), x, tf_xla=tf_xla) for name, factory in factories.items()}
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def peak_memory_mb(factory, input_shape, steps=3, seed=0, tf_xla=False):
    """Largest growth of resident memory (MB) during `steps` forward+backward passes.

    Meaningful only in a process that ran nothing else (see `benchmarks/run.py`).
    """
    x = np.random.default_rng(seed).standard_normal(input_shape).astype("float32")
    layer = factory()
    if not layer.built:
        layer.build(input_shape)
    step = make_step(layer, x, tf_xla=tf_xla)
    before = _rss_mb()
    sampler = _RssSampler()
    sampler.start()
    for _ in range(steps):
        step()
    sampler.running = False
    sampler.join()
    return max(0.0, sampler.peak - before)
