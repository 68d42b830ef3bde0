"""Calibration runs for the accelerator branches of the "auto" choices (not a test).

Measures, per backend present, one training step (forward + backward, median of repeats,
interleaved rounds; `bench_lib.time_layers`) of

- `LogPolarConv2D` on its dense path (A), its region-pooling path (B) with the backend's
  pooling, and path B with the depthwise-convolution pooling of the reference, over a grid
  of channel counts for the issue's two region configs, beside `Conv2D` k×k and 5×5;
- the E4 aggregation op alone (`keras_convx.ops.group.aggregate`: "auto", "shifts",
  "patches") on the two E4 blocks of the benchmark suite.

These are the numbers `keras_convx.ops.log_polar.choose_implementation` and the E4
aggregation choice are fitted to on GPU (benchmarks/RESULTS_GPU.md). Usage:

    python benchmarks/gpu_calibration.py --backends jax torch --out results_dir

Each backend runs in a fresh subprocess; the result is `calibration.json` in `--out`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LPSC_REGIONS = [(9, 2, 6, 3.0), (11, 3, 8, 2.0)]
LPSC_CHANNELS = [(3, 16), (16, 16), (32, 32), (64, 64), (128, 128), (256, 256)]
# (name, batch, size, fields M per slice, A = slices·|G|, k, stride)
E4_AGGREGATIONS = [
    ("MNIST-rot block p4 16 fields k5 slices 2", 16, 28, 8, 8, 5),
    ("CIFAR block p4 32 fields k3 16 slices", 16, 32, 2, 64, 3),
]


def _worker(args):
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import keras
    import numpy as np

    import bench_lib
    from keras_convx.layers import LogPolarConv2D
    from keras_convx.ops import dispatcher
    from keras_convx.ops import group as gops

    backend = keras.backend.backend()
    rows = []
    channels = LPSC_CHANNELS[: args.quick or None]
    for k, rings, sectors, growth in LPSC_REGIONS[: args.quick or None]:
        for cin, cout in channels:
            def lpsc(impl):
                return lambda: LogPolarConv2D(cout, k, rings=rings, sectors=sectors,
                                              growth_rate=growth, implementation=impl)

            factories = {
                "dense": lpsc("dense"),
                "pool": lpsc("pool"),
                f"conv{k}": lambda: keras.layers.Conv2D(cout, k, padding="same"),
                "conv5": lambda: keras.layers.Conv2D(cout, 5, padding="same"),
            }
            shape = (16, 32, 32, cin)
            times = bench_lib.time_layers(factories, shape, repeats=args.repeats)
            # Path B with the reference's depthwise pooling (traced under reference mode).
            with dispatcher.reference_mode():
                times["pool_depthwise"] = bench_lib.time_layers(
                    {"p": lpsc("pool")}, shape, repeats=args.repeats)["p"]
            rows.append({"op": "lpsc", "k": k, "regions": [rings, sectors, growth],
                         "cin": cin, "cout": cout, "ms": times})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    rng = np.random.default_rng(0)
    for name, batch, size, m, a, k in E4_AGGREGATIONS[: args.quick or None]:
        v = keras.ops.convert_to_tensor(rng.standard_normal((batch, size, size, m, a)), "float32")
        kern = keras.ops.convert_to_tensor(
            rng.standard_normal((batch, size, size, k * k, a)), "float32")
        times = {}
        for impl in ("auto", "shifts", "patches"):
            times[impl] = _time_op(lambda v_, k_, impl=impl: gops.aggregate(
                v_, k_, k, (1, 1), implementation=impl), v, kern, args.repeats)
        rows.append({"op": "e4_aggregate", "case": name, "ms": times})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"backend": backend, "device": _device(backend), "rows": rows}))


def _time_op(fn, v, kern, repeats):
    """Median ms of forward + gradient w.r.t. both inputs of `fn(v, kern)`."""
    import keras

    import bench_lib

    step = bench_lib.grad_step(lambda a, b: keras.ops.sum(keras.ops.square(fn(a, b))), [v, kern])
    return bench_lib.time_step(step, repeats=repeats)


def _device(backend):
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", type=int, default=0, help="first N configs only (smoke run)")
    parser.add_argument("--out", default=".")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    results = []
    for backend in args.backends:
        t0 = time.time()
        cmd = [sys.executable, __file__, "--worker", "--repeats", str(args.repeats),
               "--quick", str(args.quick)]
        proc = subprocess.run(cmd, env=dict(os.environ, KERAS_BACKEND=backend),
                              capture_output=True, text=True)
        if proc.returncode:
            results.append({"backend": backend, "error": proc.stderr[-3000:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        results[-1]["seconds"] = round(time.time() - t0, 1)
        print(backend, results[-1].get("device"), results[-1]["seconds"], "s",
              "ERROR" if "error" in results[-1] else "", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
