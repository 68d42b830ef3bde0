"""Channel pruning that speeds up: a compacted model against the dense one, Keras and ONNX.

Usage: python benchmarks/pruning_speed.py [--backends jax tensorflow torch] [--repeats 30]

For each backend (a process of its own): a conv-dominated CNN (32×32×3 input; Conv2D 64 →
Conv2D 128 → max pool → Conv2D 128 → global average → Dense 128 → Dense 10, random weights),
and the same model made prunable with `granularity="channel"`, 50% of every conv's and the
hidden Dense's outputs pruned (`keras_convx.pruning.update_masks`) and `compact`ed. Timed at
batch 32, median of `--repeats` calls after warm-up, in the same process:
- the forward pass, `predict_on_batch` (skips `predict`'s fixed per-call overhead);
- the ONNX file of each (`keras_convx.export.to_onnx`, verified), in ONNX Runtime;
- on jax, the same again with glibc's allocator thresholds fixed (`ALLOCATOR`: large
  buffers kept in the process instead of mapped and unmapped at every call);
- one training step (`train_on_batch`, SGD) of the `make_prunable` model (masks at 50%, the
  masked reads in the step) against the plain model's: the pruning overhead while training.
The section between the "pruning-speed" markers of benchmarks/RESULTS_HEADER.md is rewritten,
then RESULTS.md re-rendered (`run.py --render`).
"""

import datetime
import json
import os
import platform
import sys
import tempfile
import time

import sections  # noqa: E402  (benchmarks/sections.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- pruning-speed:begin -->", "<!-- pruning-speed:end -->"
BATCH = 32
# glibc's malloc serves buffers over its mmap threshold (128 KiB, raised dynamically) with
# fresh pages, returned to the OS on free: XLA:CPU allocates every intermediate of every call,
# so a jitted forward pays page faults per call (measured: the compacted model's forward
# 30.7 → 21.5 ms with these two settings, the dense one's 37 → 37). TensorFlow and PyTorch
# keep their CPU buffers. The same jax run is repeated with the settings fixed.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
# The same measurement on a model twice as wide (PRUNING_SPEED_WIDTH=2: Conv2D 128 → 256 →
# pool → 256, Dense 256): a model where the convolutions dominate more.
WIDE = {"PRUNING_SPEED_WIDTH": "2"}
VARIANTS = [("jax, MALLOC_MMAP/TRIM_THRESHOLD_ set", "jax", ALLOCATOR),
            ("jax, widths ×2", "jax", WIDE), ("tensorflow, widths ×2", "tensorflow", WIDE),
            ("torch, widths ×2", "torch", WIDE)]


def _widths():
    w = int(os.environ.get("PRUNING_SPEED_WIDTH", "1"))
    return 64 * w, 128 * w


def _model():
    import keras

    narrow, wide = _widths()
    keras.utils.set_random_seed(0)
    x = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(narrow, 3, padding="same", activation="relu", name="conv1")(x)
    y = keras.layers.Conv2D(wide, 3, padding="same", activation="relu", name="conv2")(y)
    y = keras.layers.MaxPooling2D()(y)
    y = keras.layers.Conv2D(wide, 3, padding="same", activation="relu", name="conv3")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(wide, activation="relu", name="hidden")(y)
    return keras.Model(x, keras.layers.Dense(10, name="classes")(y))


def _median_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def worker(repeats):
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from keras_convx import export
    from keras_convx import pruning

    x = np.random.default_rng(0).standard_normal((BATCH, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).standard_normal((BATCH, 10)).astype("float32")
    dense = _model()
    prunable = pruning.make_prunable(dense, granularity="channel")
    pruning.update_masks(prunable, 0.5)
    small, report = pruning.compact(prunable, return_report=True)
    row = {"model": "Conv2D %d → %d → pool → %d, Dense %d" % (*_widths(), _widths()[1],
                                                              _widths()[1]),
           "params": (report["params_before"], report["params_after"]),
           "macs": (report["macs_before"], report["macs_after"])}
    row["keras"] = [_median_ms(lambda m=m: m.predict_on_batch(x), repeats) for m in (dense, small)]
    with tempfile.TemporaryDirectory() as folder:
        onnx = []
        for name, model in (("dense", dense), ("small", small)):
            path = os.path.join(folder, f"{name}.onnx")
            export.to_onnx(model, path, sample_inputs=x[:4])
            run = export.runtime(path)
            onnx.append(_median_ms(lambda run=run: run(x), repeats))
        row["onnx"] = onnx
    plain = _model()
    train = []
    for model in (plain, prunable):
        model.compile(keras.optimizers.SGD(0.01), "mse")
        train.append(_median_ms(lambda model=model: model.train_on_batch(x, y), repeats))
    row["train"] = train
    print(f"# {keras.backend.backend()}: {row}", file=sys.stderr, flush=True)
    print(json.dumps(row))


def _section(results):
    lines = [
        BEGIN,
        f"## Channel pruning + compact vs the dense model (run of {datetime.date.today()}, "
        f"{os.cpu_count()}-core {platform.machine()})",
        "",
        "Written by `python benchmarks/pruning_speed.py`. A conv-dominated CNN on 32×32×3 "
        "(Conv2D 64 → 128 → pool → 128 → GAP → Dense 128 → 10; the \"widths ×2\" rows: "
        "every width doubled), 50% of every conv's and the "
        "hidden Dense's outputs pruned (`make_prunable(granularity=\"channel\")`, "
        "`update_masks`) and `compact`ed; median ms at batch 32, same process. Speed-up = "
        "dense / compact; training overhead = `make_prunable` model's `train_on_batch` / the "
        "plain model's. The second jax row is the same run with glibc's malloc told to keep "
        "large buffers (`MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824` "
        "in the environment): by default XLA:CPU's intermediates are mapped and unmapped at "
        "every call, and the page faults cost the compacted model a third of its forward "
        "time (see README, 'Pruning any Keras 3 model').",
        "",
        "| backend | model | parameters | MACs | Keras predict_on_batch ms (speed-up) | ONNX Runtime ms "
        "(speed-up) | train step ms: plain → prunable (overhead) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, row in results.items():
        (pb, pa), (mb, ma) = row["params"], row["macs"]
        kd, ks = row["keras"]
        od, os_ = row["onnx"]
        tp, tq = row["train"]
        lines.append(
            f"| {backend} | {row.get('model', '')} | {pb:,} → {pa:,} | {mb:,} → {ma:,} | {kd:.2f} → {ks:.2f} "
            f"({kd / ks:.2f}×) | {od:.2f} → {os_:.2f} ({od / os_:.2f}×) | {tp:.2f} → {tq:.2f} "
            f"({tq / tp:.2f}×) |")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    sections.main(__file__, worker, _section, BEGIN, END, default_repeats=30,
                  variants=VARIANTS)
