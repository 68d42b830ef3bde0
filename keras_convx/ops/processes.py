"""The engines' own multi-process machinery, one function per engine call.

`keras_convx.multi_process` validates and documents; this module makes the calls (the
backends are imported here, lazily, only the one in use): `jax.distributed.initialize`,
`torch.distributed.init_process_group` with `DistributedDataParallel`, and
`tf.distribute.MultiWorkerMirroredStrategy` configured by `TF_CONFIG`.
"""

import datetime
import faulthandler
import json
import os
import sys

import keras
import numpy as np


def join_jax(coordinator, num_processes, process_id, timeout):
    """`jax.distributed.initialize` (the call `keras.distribution.initialize` makes), with
    its `initialization_timeout`, `heartbeat_timeout_seconds` and `shutdown_timeout_seconds`:
    a process that cannot reach its peers, or loses one, fails instead of hanging, and one
    that exits waits at most `timeout` for the others at jax's shutdown barrier (its default,
    300 s, kept a failed job's surviving process alive for 5 minutes after a peer had gone).
    Then every process' `num_processes` is compared (`multihost_utils.process_allgather`):
    the coordinator accepts a process that was given another count, which would fail later,
    or wait forever, mid-training."""
    import jax  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id,
                               initialization_timeout=max(1, int(timeout)),
                               heartbeat_timeout_seconds=max(10, min(int(timeout), 100)),
                               shutdown_timeout_seconds=max(1, int(timeout)))
    counts = sorted({int(n) for n in np.ravel(multihost_utils.process_allgather(
        np.asarray([num_processes], np.int32)))} | {jax.process_count()})
    if counts != [num_processes]:
        raise ValueError(
            f"The processes of this job disagree on num_processes: {counts} (this one was "
            f"given {num_processes}); start every process with the same count.")


def join_torch(coordinator, num_processes, process_id, timeout, backend=None):
    """`torch.distributed.init_process_group` over TCP (gloo on CPU, nccl with CUDA), then
    every process' `num_processes` compared."""
    import torch  # noqa: PLC0415

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(
        backend, init_method=f"tcp://{coordinator}", world_size=num_processes,
        rank=process_id, timeout=datetime.timedelta(seconds=timeout))
    # The rendezvous can accept a process given another world size (seen with gloo): the
    # counts are compared (one all-reduce, bounded by the group's timeout).
    counts = torch.tensor([num_processes, -num_processes])
    torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
    if int(counts[0]) != num_processes or -int(counts[1]) != num_processes:
        raise ValueError(
            f"The processes of this job disagree on num_processes: between "
            f"{-int(counts[1])} and {int(counts[0])} (this one was given {num_processes}); "
            "start every process with the same count.")


def join_tensorflow(addresses, process_id, timeout):
    """A `tf.distribute.MultiWorkerMirroredStrategy` over `addresses` (written to
    `TF_CONFIG`, TensorFlow's cluster description), collectives bounded by `timeout`."""
    import tensorflow as tf  # noqa: PLC0415

    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": list(addresses)},
                                          "task": {"type": "worker", "index": process_id}})
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout))
    # The constructor waits for every worker with no deadline, holding the interpreter
    # lock (TensorFlow 2.21 enforces none while the service leader waits for the others),
    # so nothing in Python can interrupt it: past `timeout`, the standard library's
    # faulthandler watchdog prints where it waited and ends the process (exit status 1).
    sys.stderr.write(
        f"keras_convx.multi_process: waiting up to {timeout:g} s for the workers "
        f"{list(addresses)}; a worker still waiting then exits with its traceback.\n")
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        faulthandler.cancel_dump_traceback_later()


def is_tensorflow_distributed_value(value):
    """Whether `value` is a `tf.distribute.DistributedValues` (e.g. a `PerReplica`)."""
    import tensorflow as tf  # noqa: PLC0415

    return isinstance(value, tf.distribute.DistributedValues)


def job(backend=None):
    """`(this process' index, the number of processes)` of the job: `(0, 1)` on a single
    process. The index orders the processes as the engine does (TensorFlow's
    MultiWorkerMirroredStrategy: the chief, when the cluster names one, first)."""
    backend = backend or keras.backend.backend()
    if backend == "jax":
        import jax  # noqa: PLC0415

        return jax.process_index(), jax.process_count()
    if backend == "torch":
        import torch  # noqa: PLC0415

        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            return distributed.get_rank(), distributed.get_world_size()
        return 0, 1
    resolver = _tensorflow_cluster()
    if resolver is None:
        return 0, 1
    jobs = resolver.cluster_spec().as_dict()
    chiefs = len(jobs.get("chief", []))
    task_id = int(resolver.task_id or 0)
    index = task_id if resolver.task_type == "chief" else chiefs + task_id
    return index, chiefs + len(jobs.get("worker", []))


def _tensorflow_cluster():
    """TensorFlow's reading of `TF_CONFIG` (what a MultiWorkerMirroredStrategy joins), or
    None without one."""
    if not os.environ.get("TF_CONFIG"):
        return None
    import tensorflow as tf  # noqa: PLC0415

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return resolver if resolver.task_type in ("chief", "worker") else None


def torch_process_group_ready():
    """Whether torch's default process group is initialised (a group of one included)."""
    import torch  # noqa: PLC0415

    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized()


def torch_data_parallel(module, options):
    """`torch.nn.parallel.DistributedDataParallel(module, **options)`."""
    import torch  # noqa: PLC0415

    return torch.nn.parallel.DistributedDataParallel(module, **options)


def torch_no_grad():
    """`torch.no_grad()`, the context of an optimizer update."""
    import torch  # noqa: PLC0415

    return torch.no_grad()


def torch_sum_over_processes(values):
    """Each tensor summed over the processes (`torch.distributed.all_reduce`), as copies."""
    import torch  # noqa: PLC0415

    summed = []
    for value in values:
        copy = value.detach().clone()
        torch.distributed.all_reduce(copy)
        summed.append(copy)
    return summed
