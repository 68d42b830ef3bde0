"""Data-parallel training on 4 virtual CPU devices equals single-device training on the same
global batch (tests/distributed.py, run in a process of its own because the device count is
fixed when the backend starts).

JAX (`keras.distribution.DataParallel`, and `ModelParallel` with a LayoutMap sharding the
larger kernels) and TensorFlow (`tf.distribute.MirroredStrategy`): the same weights, losses,
batch-norm statistics, penalty, masks and pairwise-consistency terms; one shared basis
variable. PyTorch: Keras has no distribution API for it.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_convx.ops import core as ops_core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()

needs_distribution_api = pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras' distribution API has no PyTorch backend (torch: multi_process, one process per "
           "device, tests/test_multi_process.py)",
)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.distributed"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_distribution_api
def test_runs_on_four_devices_with_one_basis_and_identical_masks(report):
    assert report["devices"] == 4
    assert report["basis_variables"] == 1  # the shared FilterBasis stays ONE variable
    assert report["mask_sparsity"] == 0.5  # the pruning schedule fired, once
    assert report["masks"] == 0.0  # the same masks as single-device training
    if BACKEND == "jax":
        assert report["mask_replicated"]


def _check_equal_training(report):
    assert report["weights"] < 1e-5, report
    assert report["loss"] < 1e-5, report
    assert report["group_bn_statistics"] < 1e-5, report
    assert report["regularization"] < 1e-5, report  # the globally normalised penalty, after
    assert report["pairwise_weights"] < 1e-5, report
    assert report["pairwise_terms"] < 1e-5, report


@pytest.mark.skipif(BACKEND != "jax", reason="JAX DataParallel")
@needs_distribution_api
def test_data_parallel_training_equals_single_device(report):
    _check_equal_training(report)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX ModelParallel")
@needs_distribution_api
def test_model_parallel_training_equals_single_device(report):
    # The LayoutMap split these kernels' output channels (and the synaptic masks) over the
    # "model" axis of a 2×2 mesh; two pruned SGD steps still give the single-device weights.
    sharded = report["model_parallel_sharded"]
    for pattern in ("log_polar_conv2d", "/basis/kernel", "diffusion_conv2d", "synaptic/direction",
                    "synaptic/strength", "synaptic/mask"):
        assert any(pattern in path for path in sharded), (pattern, sharded)
    assert report["model_parallel_weights"] < 1e-5, report


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow MirroredStrategy")
@needs_distribution_api
def test_mirrored_training_equals_single_device(report):
    # Needs the synchronised batch norms (basis_bn_synchronized, GroupBatchNormalization's
    # synchronized) and PairwiseConsistency's terms divided by the replica count.
    _check_equal_training(report)


def test_replicas_in_sync_is_one_outside_a_strategy():
    # Runs on torch too: PairwiseConsistency divides its extra loss terms by it on every step.
    assert ops_core.replicas_in_sync() == 1
