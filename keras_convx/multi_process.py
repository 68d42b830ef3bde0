"""Multi-process training (one process per host) through each engine's own machinery.

Nothing here distributes anything itself: `initialize` joins the job with the engine's own
call (`jax.distributed.initialize`, `torch.distributed.init_process_group`,
`tf.distribute.MultiWorkerMirroredStrategy`), and `distributed_data_parallel` puts torch's
`DistributedDataParallel` into a Keras model's training step, since Keras 3.15 has no
distribution API for its torch backend. Then, per backend:

- JAX: `keras.distribution.DataParallel(auto_shard_dataset=False)` over
  `keras.distribution.list_devices()` (every process' devices) and each process feeding its
  share of every global batch (or a `tf.data.Dataset` of global batches with the default
  `auto_shard_dataset=True`, which Keras shards by process).
- TensorFlow: build and compile in the returned strategy's scope, `fit` a `tf.data.Dataset`
  of global batches (TensorFlow shards it by worker).
- PyTorch: `fit` a `torch.utils.data.DataLoader` with torch's `DistributedSampler` and the
  per-process batch size.

Save with `save_model` on every process: the chief writes the file (loadable on one
process), the others a temporary copy that is deleted.

Example (2 processes on two hosts; the same lines on each, `process_id` 0 and 1):

```python
from keras_convx import multi_process

strategy = multi_process.initialize("10.0.0.1:1234,10.0.0.2:1234", 2, process_id)
# jax: keras.distribution.set_distribution(keras.distribution.DataParallel(
#          devices=keras.distribution.list_devices(), auto_shard_dataset=False))
with strategy.scope() if strategy else contextlib.nullcontext():
    model = build_model()
    model.compile(...)
# torch: multi_process.distributed_data_parallel(model)
model.fit(local_or_global_batches, ...)
multi_process.save_model(model, "model.keras")  # on every process
```
"""

import os
import shutil
import socket
import tempfile

import keras

from keras_convx import arguments
from keras_convx import keras_compat
from keras_convx.ops import processes

ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID")


def _address(text):
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            "Expected each address of job_addresses to be 'host:port' with a port in "
            f"1..65535. Received: {text!r}")
    return host, int(port)


def _check_port_free(host, port):
    """Fail now, with the address, when this process' port is taken (the engines would
    fail later, or wait)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("" if host not in ("localhost", "127.0.0.1") else host, port))
        except OSError as error:
            raise ValueError(
                f"The port of {host}:{port} is in use on this host ({error.strerror}): "
                "choose a free port for job_addresses.") from None


def _environment_int(names):
    """The first of the environment variables `names` that is set, as an int, or None."""
    for name in names:
        value = os.environ.get(name)
        if value:
            if not value.strip().isdigit():
                raise ValueError(f"Expected ${name} to be a non-negative int. Received: "
                                 f"{value!r}")
            return int(value)
    return None


def _settings(job_addresses, num_processes, process_id):
    # Keras' variables; on torch also torchrun's (MASTER_ADDR:MASTER_PORT, WORLD_SIZE, RANK).
    torchrun = keras.backend.backend() == "torch"
    job_addresses = job_addresses or os.environ.get(ENVIRONMENT[0])
    if not job_addresses and torchrun and os.environ.get("MASTER_ADDR"):
        job_addresses = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}"
    if num_processes is None:
        num_processes = _environment_int([ENVIRONMENT[1]] + (["WORLD_SIZE"] if torchrun else []))
    if process_id is None:
        process_id = _environment_int([ENVIRONMENT[2]] + (["RANK"] if torchrun else []))
    if not job_addresses or not isinstance(job_addresses, str):
        raise ValueError(
            "Expected job_addresses to be 'host:port' of the coordinator (process 0) or a "
            "comma-separated list of every process' 'host:port' (TensorFlow needs every "
            f"one), given or in ${ENVIRONMENT[0]}. Received: job_addresses={job_addresses!r}")
    addresses = [_address(a) for a in job_addresses.split(",")]
    if num_processes is None:
        num_processes = len(addresses)
    num_processes = arguments.integer("num_processes", num_processes, minimum=1)
    if len(addresses) > 1 and len(addresses) != num_processes:
        raise ValueError(
            f"job_addresses lists {len(addresses)} processes but num_processes is "
            f"{num_processes}: list every process or only the coordinator.")
    if process_id is None:
        raise ValueError(f"Expected process_id, an int in [0, {num_processes - 1}], given or "
                         f"in ${ENVIRONMENT[2]}. Received: process_id=None")
    process_id = arguments.integer("process_id", process_id, minimum=0,
                                   maximum=num_processes - 1)
    return addresses, num_processes, process_id


def initialize(job_addresses=None, num_processes=None, process_id=None, *, timeout=300):
    """Join a multi-process training job through the backend's own machinery.

    The arguments and environment variables are `keras.distribution.initialize`'s. Call it
    first thing, before any model is built, on every process.

    - JAX: `jax.distributed.initialize` with the first address as coordinator, then Keras'
      seed agreement: what `keras.distribution.initialize` does, plus the timeouts it
      does not pass and a check that every process was given the same count; use `keras.distribution.DataParallel` over
      `keras.distribution.list_devices()` (every process' devices).
    - PyTorch: `torch.distributed.init_process_group` over TCP at the first address (gloo on
      CPU, nccl with CUDA); then `distributed_data_parallel(model)`. Under `torchrun` the
      arguments may be left out: its `MASTER_ADDR`/`MASTER_PORT`, `WORLD_SIZE` and `RANK`
      are read. On GPUs, one process per GPU: set `KERAS_TORCH_DEVICE=cuda:<local rank>`
      (or `torch.cuda.set_device(local_rank)`) before Keras creates any variable.
    - TensorFlow: `TF_CONFIG` from the addresses (every worker's, each process listening on
      its own) and a `tf.distribute.MultiWorkerMirroredStrategy`, returned. Keras 3.15's
      `fit` cannot run under it as is (keras-team/keras#20585): two of its reductions are
      fixed here (`keras_compat.fix_tensorflow_multi_worker`).

    Args:
        job_addresses: str, `"host:port"` of process 0 (JAX, PyTorch) or every process'
            `"host:port"`, comma-separated, in process order (required on TensorFlow);
            default `$KERAS_DISTRIBUTION_JOB_ADDRESSES`.
        num_processes: int ≥ 1, default `$KERAS_DISTRIBUTION_NUM_PROCESSES` or the number
            of addresses.
        process_id: int in [0, num_processes), default `$KERAS_DISTRIBUTION_PROCESS_ID`.
        timeout: seconds a process waits for its peers (to join, and per collective on
            TensorFlow) before it fails with the engine's error instead of hanging. On
            TensorFlow the wait to join cannot be interrupted (the strategy's constructor
            holds the interpreter lock): a worker still waiting past it prints where it
            waited and exits with status 1 (`faulthandler`).

    Returns:
        The `tf.distribute.MultiWorkerMirroredStrategy` on TensorFlow, else None.

    Raises:
        ValueError: a missing or malformed address, a process id out of range, a count that
            disagrees with the addresses, or this process' port already in use, before
            anything starts.
    """
    addresses, num_processes, process_id = _settings(job_addresses, num_processes, process_id)
    timeout = arguments.number("timeout", timeout, 0, exclusive_minimum=True)
    backend = keras.backend.backend()
    if backend == "tensorflow" and len(addresses) != num_processes:
        raise ValueError(
            "On TensorFlow, job_addresses must list every process' 'host:port' (each "
            f"worker listens on its own). Received: {job_addresses!r}")
    coordinator = "%s:%d" % addresses[0]
    if backend == "tensorflow":
        _check_port_free(*addresses[process_id])
        strategy = processes.join_tensorflow(["%s:%d" % a for a in addresses], process_id,
                                             timeout)
        keras_compat.fix_tensorflow_multi_worker(processes.is_tensorflow_distributed_value)
        return strategy
    # torchrun's agent already serves the coordinator's port (torch's rendezvous then joins
    # it as a client): only a port this process must open itself is checked
    agent_store = (backend == "torch"
                   and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                   and "%s:%d" % addresses[0] == f"{os.environ.get('MASTER_ADDR')}:"
                                                  f"{os.environ.get('MASTER_PORT')}")
    if process_id == 0 and not agent_store:
        _check_port_free(*addresses[0])
    if backend == "jax":
        processes.join_jax(coordinator, num_processes, process_id, timeout)
        keras_compat.jax_initialize_rng()
    elif backend == "torch":
        processes.join_torch(coordinator, num_processes, process_id, timeout)
    else:
        raise ValueError(f"No multi-process route for the Keras backend {backend!r}: "
                         "expected 'jax', 'tensorflow' or 'torch'.")
    return None


def process_count():
    """How many processes train together (1 without `initialize`)."""
    return processes.job()[1]


def is_chief():
    """True on the process that writes checkpoints and logs (process 0; the only one
    without `initialize`)."""
    return processes.job()[0] == 0


def save_model(model, filepath, **options):
    """`model.save(filepath, **options)` once per job: call it on every process.

    The chief writes `filepath`; every other process writes a temporary file that is then
    deleted (TensorFlow's multi-worker saving convention). Every process must take part:
    reading JAX's global arrays and TensorFlow's mirrored variables runs the same
    computations on every process, so a save on the chief alone would leave the others
    one collective behind. The file loads on one process (`keras.saving.load_model`).

    Example:

    ```python
    multi_process.save_model(model, "checkpoint.keras")  # every process; one file
    ```

    Returns:
        The path the chief wrote, on every process.
    """
    if is_chief():
        model.save(filepath, **options)
        return filepath
    folder = tempfile.mkdtemp(prefix=f"keras_convx_process{processes.job()[0]}_")
    try:
        model.save(os.path.join(folder, os.path.basename(filepath)), **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return filepath


def distributed_data_parallel(model, **options):
    """Train `model` (PyTorch backend) with torch's `DistributedDataParallel`.

    Wraps the built model in `torch.nn.parallel.DistributedDataParallel(model, **options)`
    (which broadcasts process 0's weights and, in every backward pass, averages the
    gradients over the processes) and routes the model's training step through it, so
    `model.fit` with its callbacks, optimizer, losses (`model.losses` included) and
    metrics keeps working, as does a wrapper that defines its own loss such as
    `training.PairwiseConsistency`. The step is Keras' own (loss, loss scaling,
    `optimizer.apply`, metrics) with the forward pass through DDP. The reported metrics are
    those of the global batch: each metric's state is summed over the processes when read
    (`torch.distributed.all_reduce`), so History and callbacks see the same numbers on
    every process. Batch statistics are per process unless the layer is synchronized
    (`GroupBatchNormalization(synchronized=True)`,
    `SharedBasisConv2D(basis_bn_synchronized=True)`).

    Feed each process its share of the data (`torch.utils.data.DistributedSampler`) with
    the per-process batch size: DDP averages the per-process gradients, which equals the
    gradient of the global batch's mean loss when every process has the same batch size.
    Every process must take part in `fit` and `evaluate` alike (each metric read is a
    collective); metrics whose state adds up over processes (Keras' means, accuracies,
    counts) are exact, a metric keeping a maximum would not be.

    Example (on every process, after `initialize`):

    ```python
    model = build_model()  # built: DDP broadcasts process 0's weights
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    multi_process.distributed_data_parallel(model)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset)
    model.fit(torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler))
    ```

    Args:
        model: a built `keras.Model`, after `initialize` (or any
            `torch.distributed.init_process_group`).
        **options: `DistributedDataParallel`'s keyword arguments (e.g. `device_ids`).

    Returns:
        The `DistributedDataParallel` module (the model trains through it; save `model`).
    """
    if keras.backend.backend() != "torch":
        raise ValueError(
            "distributed_data_parallel is for the torch backend; on JAX use "
            "keras.distribution.DataParallel, on TensorFlow the strategy "
            f"multi_process.initialize returns. Backend: {keras.backend.backend()!r}")
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected model to be a keras.Model. Received: {type(model).__name__}")
    if not model.built or not model.weights:
        raise ValueError("Expected a built model with weights (DistributedDataParallel "
                         "broadcasts them when it wraps the model): build it first.")
    if "train_step" in vars(model):
        raise ValueError("This model already trains through distributed_data_parallel.")
    if type(model).train_step is not keras.Model.train_step:
        raise ValueError(
            f"{type(model).__name__} defines its own train_step, which would not go through "
            "DistributedDataParallel: override compute_loss (as "
            "training.PairwiseConsistency does) instead of train_step.")
    if not processes.torch_process_group_ready():
        raise ValueError("No torch.distributed process group: call "
                         "keras_convx.multi_process.initialize(...) first.")
    parallel = processes.torch_data_parallel(model, options)

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = parallel(x, training=True)
        model.zero_grad()
        loss = keras_compat.train_step_loss(model, x, y, y_pred, sample_weight)
        if model.optimizer is not None:
            loss = model.optimizer.scale_loss(loss)
        weights = model.trainable_weights[:]
        if weights:
            loss.backward()  # DDP averages the gradients over the processes here
            with processes.torch_no_grad():
                model.optimizer.apply([v.value.grad for v in weights], weights)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_metrics_result():
        results = {}
        for metric in model.metrics:
            summed = processes.torch_sum_over_processes([v.value for v in metric.variables])
            result = metric.stateless_result(summed)
            results.update(result) if isinstance(result, dict) else \
                results.__setitem__(metric.name, result)
        return {name: keras.ops.convert_to_numpy(value).item()
                if getattr(value, "ndim", 1) == 0 else value
                for name, value in results.items()}

    # Keras looks both up on the instance: fit's steps and its logs go through these.
    model.train_step = train_step
    model.get_metrics_result = get_metrics_result
    return parallel
