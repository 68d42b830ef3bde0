"""Size sweep (issue 27): E4Conv2D and LogPolarConv2D against their baselines as the image grows.

Times what `Model.fit` runs per batch: `model.train_on_batch` of a one-layer
`keras.Model(Input((S, S, C)), layer(input))` compiled with SGD, loss "mse" and
`jit_compile=True` (jax: XLA; torch: torch.compile). `--no-jit` compiles with "auto", Keras'
default (jax: still XLA; torch: eager). Batch 8, square images of each `--sizes`; inputs and
targets put on the device once. Each model is warmed up (3 calls), then the layer and its
baselines run in interleaved rounds: median of `--repeats` calls (train_on_batch returns
Python floats, so every call is synchronised).

- e4: `E4Conv2D(8, 5, group="p4", reduction_ratio=1, slices=2)` on a p4 map of 8 fields
  (32 channels) vs `GroupConv2D(8, 5, group="p4")`; ratio = E4 / GroupConv2D.
- lpsc: `LogPolarConv2D(32, 9, rings=2, sectors=6, growth_rate=3.0)` on 32 channels,
  implementation "auto" (also "dense" and "pool" as extra columns) vs `Conv2D(32, 9,
  padding="same")`; ratio = auto / Conv2D 9x9.

`--input-gradient`: a 1×1 `Conv2D(C, 1)` before the layer and before each baseline, so that
the step also computes the layer's input gradient, as every layer but the first of a network
does (a one-layer model's step skips it: on jax XLA drops it). `--depth N`: N of the layer
(and of each baseline) in a row, so that the step holds what a network keeps for its
backward pass, layer after layer (a one-layer step's peak hides it). `--recompute`:
`E4Conv2D(recompute=True)` and `LogPolarConv2D(recompute=True)` (every LPSC variant).

`--memory`: peak memory of one training step above what was allocated before it (null where
not measured). tensorflow, on the CPU too: its allocator's peak after `reset_memory_stats`,
after warm-up (no XLA compile scratch in it). jax on the CPU: XLA's temp bytes of the jitted
value-and-grad (`_jax_temp_mb`: deterministic, no compile scratch, no optimizer update).
torch: on a GPU `reset_peak_memory_stats` after warm-up, in the timing process; on the CPU the
most bytes live at once during one step, from the profiler's record of every allocation.
jax on a GPU: `peak_bytes_in_use` never resets, so each model runs in a fresh subprocess; its
peak is over the whole process (compilation, e.g. XLA autotuning scratch, included): best effort.

    python benchmarks/size_sweep.py --backends jax torch --sizes 32 64 128 --repeats 10 \\
        --out DIR [--memory] [--no-jit] [--fast]

Each backend runs in a fresh subprocess (KERAS_BACKEND set); `--cases e4|lpsc` runs a subset.
Writes DIR/size_sweep.json and DIR/size_sweep.md (after each backend) and prints the Markdown
table. `--fast` (or KERAS_CONVX_FAST=1): sizes 16 and 24, 2 repeats, a smoke run. Not a test:
nothing here asserts on timings.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH, CHANNELS, WARMUP = 8, 32, 3
CASES = {"e4": ["layer", "baseline"], "lpsc": ["layer", "dense", "pool", "baseline"]}


def _factory(case, variant, channels=CHANNELS, recompute=False):
    import keras

    from keras_convx.layers import E4Conv2D, GroupConv2D, LogPolarConv2D

    if case == "e4":
        if variant == "layer":
            return E4Conv2D(channels // 4, 5, group="p4", reduction_ratio=1, slices=2,
                            recompute=recompute)
        return GroupConv2D(channels // 4, 5, group="p4")
    if variant == "baseline":
        return keras.layers.Conv2D(channels, 9, padding="same")
    impl = "auto" if variant == "layer" else variant
    return LogPolarConv2D(channels, 9, rings=2, sectors=6, growth_rate=3.0, implementation=impl,
                          recompute=recompute)


def _model(case, variant, size, jit, seed=0, channels=CHANNELS, stem=False, depth=1,
           recompute=False):
    """(compiled model, x, y, first layer), x and y already device tensors. `stem`: a 1×1
    Conv2D before the layer, so that the step computes the layer's input gradient; `depth`:
    that many of the layer in a row (what a network holds for its backward pass)."""
    import keras
    import numpy as np

    inputs = keras.Input((size, size, channels))
    layers = [_factory(case, variant, channels, recompute) for _ in range(depth)]
    hidden = keras.layers.Conv2D(channels, 1)(inputs) if stem else inputs
    for layer in layers:
        hidden = layer(hidden)
    model = keras.Model(inputs, hidden)
    layer = layers[0]
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse", jit_compile=jit)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, size, size, channels)).astype("float32")
    y = rng.standard_normal((BATCH, *model.output_shape[1:])).astype("float32")
    return model, keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), layer


def _device(backend):
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return str(d.device_kind), d.platform != "cpu"
    if backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
        return (torch.cuda.get_device_name(0) if gpu else "cpu"), gpu
    return "cpu", False


def _torch_peak_mb(model, x, y, gpu):
    """One step's peak above what was allocated before it. GPU: the caching allocator's
    statistics. CPU (torch keeps none there): the profiler's record of every allocation and
    free during the step (deterministic for one sequence of ops)."""
    import torch

    if not gpu:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as profile:
            model.train_on_batch(x, y)
        live = peak = 0
        for event in sorted(profile.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
                live += event.nbytes()
                peak = max(peak, live)
        return peak / 2**20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model.train_on_batch(x, y)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _jax_temp_mb(model, x, y):
    """XLA's buffer assignment of the model's jitted value-and-grad of the "mse" loss (temp
    bytes: every intermediate of the forward and backward passes at its peak; no inputs,
    weights or compile scratch, and not the optimizer's update). Deterministic, CPU or GPU."""
    import jax
    import keras

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(weights, x, y):
        out, _ = model.stateless_call(weights, frozen, x, training=True)
        return keras.ops.mean(keras.losses.mean_squared_error(y, out))

    step = jax.jit(jax.value_and_grad(loss)).lower(trainable, x, y).compile()
    return step.memory_analysis().temp_size_in_bytes / 2**20


MEMORY_NOTES = {
    "jax": "jax: process peak above pre-step usage, fresh process per model (compile scratch "
           "included)",
    "jax-cpu": "jax: XLA temp bytes of the jitted value-and-grad (deterministic; no compile "
               "scratch, no optimizer update)",
    "tensorflow": "tensorflow: allocator peak of one step above allocated before it (after "
                  "warm-up; no compile scratch)",
    "torch": "torch: peak of one step above allocated before it (after warm-up; CPU: the "
             "profiler's allocation record)",
}


def _tf_peak_mb(model, x, y, gpu):
    """TensorFlow's allocator peak during one step above what was allocated before it (after
    warm-up: no compile scratch, which XLA takes outside the allocator). On the CPU too."""
    import tensorflow as tf

    device = "GPU:0" if gpu else "CPU:0"
    try:  # TensorFlow documents the statistics for GPUs and TPUs; the x86 CPU build tracks them
        tf.config.experimental.reset_memory_stats(device)
    except ValueError:
        return None
    before = tf.config.experimental.get_memory_info(device)["current"]
    model.train_on_batch(x, y)
    return (tf.config.experimental.get_memory_info(device)["peak"] - before) / 2**20


def worker(args):
    sys.path[:0] = [HERE, ROOT]
    import keras

    backend = keras.backend.backend()
    device, gpu = _device(backend)
    jit = "auto" if args.no_jit else True
    if backend == "torch":  # dynamo's cache is per code object, shared by all the models: its
        import torch._dynamo  # default limit (8) silently drops later models to eager; fail instead

        config = torch._dynamo.config
        for name, value in {"recompile_limit": 64, "cache_size_limit": 64,
                            "accumulated_recompile_limit": 1024,
                            "fail_on_recompile_limit_hit": True}.items():
            if hasattr(config, name):
                setattr(config, name, value)
    if args.mem_worker:  # jax, GPU: one model in this fresh process
        import jax

        case, variant = args.mem_worker[0], args.mem_worker[1]
        size, channels = int(args.mem_worker[2]), int(args.mem_worker[3])
        model, x, y, _ = _model(case, variant, size, jit, channels=channels,
                                stem=args.input_gradient, depth=args.depth,
                                recompute=args.recompute)
        stats = lambda: jax.devices()[0].memory_stats() or {}  # None on CPU
        before = stats().get("bytes_in_use")
        for _ in range(WARMUP):
            model.train_on_batch(x, y)
        peak = stats().get("peak_bytes_in_use")
        print(json.dumps(None if None in (before, peak) else (peak - before) / 2**20))
        return
    rows = []
    for size, channels, case in [(s, c, case) for s in args.sizes for c in args.channels
                                 for case in args.cases]:
        variants = CASES[case]
        built = {v: _model(case, v, size, jit, channels=channels, stem=args.input_gradient,
                           depth=args.depth, recompute=args.recompute) for v in variants}
        for model, x, y, _ in built.values():
            for _ in range(WARMUP):
                model.train_on_batch(x, y)
        samples = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved rounds
            for v, (model, x, y, _) in built.items():
                t0 = time.perf_counter()
                model.train_on_batch(x, y)
                samples[v].append((time.perf_counter() - t0) * 1e3)
        ms = {v: statistics.median(s) for v, s in samples.items()}
        peak = {v: None for v in variants}
        if args.memory and backend == "torch":
            peak = {v: _torch_peak_mb(m, x, y, gpu) for v, (m, x, y, _) in built.items()}
        if args.memory and backend == "jax" and not gpu:
            peak = {v: _jax_temp_mb(m, x, y) for v, (m, x, y, _) in built.items()}
        if args.memory and backend == "tensorflow":
            peak = {v: _tf_peak_mb(m, x, y, gpu) for v, (m, x, y, _) in built.items()}
        row = {"backend": backend, "device": device, "case": case, "size": size,
               "channels": channels,
               "batch": BATCH, "layer_ms": ms["layer"], "baseline_ms": ms["baseline"],
               "ratio": ms["layer"] / ms["baseline"],
               "jit": str(built["layer"][0].jit_compile), "repeats": args.repeats,
               "keras": keras.__version__, "peak_mb": peak,
               "input_gradient": args.input_gradient, "depth": args.depth,
               "recompute": args.recompute}
        if case == "lpsc":
            row.update(dense_ms=ms["dense"], pool_ms=ms["pool"],
                       auto_path=built["layer"][3].resolved_implementation())
        rows.append(row)
        print(f"# {backend} {case} {size} px {channels} ch: {ms}", file=sys.stderr,
              flush=True)
        del built
    print(json.dumps({"backend": backend, "device": device, "gpu": gpu, "rows": rows}))


def _spawn(backend, extra):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *extra]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # progress goes to stderr as it runs


def _fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def render(rows):
    head = ("| backend | device | case | size | channels | layer ms | baseline ms | layer / baseline | "
            "LPSC dense ms | LPSC pool ms | auto path | layer peak MB | baseline peak MB |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | ERROR: {r['error']} |" + " |" * 11)
            continue
        depth = f" ×{r['depth']} in a row" if r.get("depth", 1) > 1 else ""
        depth += ", recompute" if r.get("recompute") else ""
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['case']}"
            f"{' (input gradient)' if r.get('input_gradient') else ''}{depth} | {r['size']} | "
            f"{r.get('channels', CHANNELS)} | {_fmt(r['layer_ms'])} | "
            f"{_fmt(r['baseline_ms'])} | **{_fmt(r['ratio'])}×** | {_fmt(r.get('dense_ms'))} | "
            f"{_fmt(r.get('pool_ms'))} | {r.get('auto_path', '—')} | "
            f"{_fmt(r['peak_mb']['layer'], '.0f')} | {_fmt(r['peak_mb']['baseline'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--channels", nargs="+", type=int, default=[CHANNELS],
                        help="input channels (E4: channels/4 p4 fields; LPSC: filters too)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default=".")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of a step on every backend, CPU or GPU")
    parser.add_argument("--no-jit", action="store_true", help='compile with jit_compile="auto"')
    parser.add_argument("--input-gradient", action="store_true",
                        help="a 1x1 Conv2D stem before the layer and its baselines: the step "
                             "computes the layer's input gradient, as inside a network")
    parser.add_argument("--recompute", action="store_true",
                        help="E4Conv2D / LogPolarConv2D(recompute=True): each layer keeps "
                             "only its input")
    parser.add_argument("--depth", type=int, default=1,
                        help="that many of the layer (and of each baseline) in a row")
    parser.add_argument("--fast", action="store_true", help="smoke run: sizes 16 24, 2 repeats")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mem-worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.fast or os.environ.get("KERAS_CONVX_FAST", "0").lower() in ("1", "true", "yes"):
        args.sizes, args.repeats = [16, 24], 2
    common = ["--sizes", *map(str, args.sizes), "--repeats", str(args.repeats),
              "--channels", *map(str, args.channels),
              "--cases", *args.cases, "--depth", str(args.depth)]
    common += ["--recompute"] * args.recompute
    common += (["--memory"] * args.memory + ["--no-jit"] * args.no_jit
               + ["--input-gradient"] * args.input_gradient)
    rows = []
    for backend in args.backends:
        t0 = time.time()
        try:
            result = _spawn(backend, common)
            if args.memory and result["gpu"] and backend == "jax":
                for row in result["rows"]:
                    row["peak_mb"] = {v: _spawn(backend, common + [
                        "--mem-worker", row["case"], v, str(row["size"]), str(row["channels"])])
                        for v in row["peak_mb"]}
        except subprocess.CalledProcessError as e:  # keep the other backends' rows
            rows.append({"backend": backend, "error": f"worker exited with {e.returncode}"})
            continue
        for row in result["rows"]:
            measured = any(v is not None for v in row["peak_mb"].values())
            note = "jax-cpu" if backend == "jax" and not result["gpu"] else backend
            row["peak_memory_note"] = MEMORY_NOTES[note] if measured else None
        rows += result["rows"]
        print(f"# {backend} on {result['device']}: {time.time() - t0:.0f} s", file=sys.stderr,
              flush=True)
        _write(args.out, rows)  # after each backend: a later failure keeps these
    print(_write(args.out, rows))


def _write(out, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "size_sweep.json"), "w") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    table = render(rows)
    with open(os.path.join(out, "size_sweep.md"), "w") as f:
        f.write(table)
    return table

if __name__ == "__main__":
    sys.exit(main())
