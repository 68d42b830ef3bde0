"""Run every benchmark case on every backend and rewrite benchmarks/RESULTS.md.

Usage: python benchmarks/run.py [--backends jax tensorflow torch] [--cases SUBSTR ...]
       [--repeats 15] [--no-memory]

Each backend runs in its own process (KERAS_BACKEND set); each peak-memory figure in a
process of its own. Timings are medians of forward+backward passes after warm-up; ratios
are against baselines measured in the same process.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "RESULTS.md")


def _select(cases, patterns):
    return [c for c in cases if not patterns or any(p in c["name"] for p in patterns)]


def worker(args):
    sys.path[:0] = [HERE, ROOT]
    import bench_lib
    from cases import CASES

    rows = []
    for case in _select(CASES, args.cases):
        if args.memory:
            factory = case["layer"] if args.memory == "layer" else case["baselines"][args.memory]
            print(json.dumps(bench_lib.peak_memory_mb(factory, case["input_shape"],
                                                      tf_xla=args.tf_xla)))
            return
        factories = {"layer": case["layer"], **case["baselines"]}
        ms = bench_lib.time_layers(factories, case["input_shape"], repeats=args.repeats,
                                   tf_xla=args.tf_xla)
        rows.append({"case": case["name"], "family": case.get("family", ""), "ms": ms})
        print(f"# {bench_lib.BACKEND} {case['name']}: {ms}", file=sys.stderr, flush=True)
    print(json.dumps(rows))


def _spawn(backend, extra):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *extra]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--tf-xla", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path[:0] = [HERE, ROOT]
    from cases import CASES

    import keras

    lines = []
    for backend in args.backends:
        common = ["--repeats", str(args.repeats)] + (["--tf-xla"] if args.tf_xla else [])
        if args.cases:
            common += ["--cases", *args.cases]
        rows = _spawn(backend, common)
        for row in rows:
            case = next(c for c in CASES if c["name"] == row["case"])
            memory = {}
            if not args.no_memory:
                for variant in ["layer", *case["baselines"]]:
                    memory[variant] = _spawn(backend, ["--cases", case["name"], "--memory", variant])
            ms = row["ms"]
            ratios = "; ".join(f"{ms['layer'] / ms[b]:.2f}× {b}" for b in case["baselines"])
            base_ms = "; ".join(f"{b} {ms[b]:.1f}" for b in case["baselines"])
            mem = ("; ".join(f"{k} {v:.0f}" for k, v in memory.items())) if memory else "—"
            lines.append(f"| {row['case']} | {backend} | {ms['layer']:.1f} | {base_ms} | {ratios} | {mem} |")

    stamp = datetime.date.today().isoformat()
    mode = "tf.function + XLA" if args.tf_xla else "tf.function (graph, no XLA)"
    table = "\n".join([
        "| case | backend | layer ms | baselines ms | layer / baseline | peak RSS growth MB |",
        "|---|---|---|---|---|---|",
        *lines,
    ])
    section = (
        f"## Run of {stamp}\n\nMachine: {_machine()}. keras {keras.__version__}. "
        f"Forward+backward (input and weight gradients), median of {args.repeats} after warm-up; "
        f"jax: jit; tensorflow: {mode}; torch: eager.\n\n{table}\n"
    )
    header = open(os.path.join(HERE, "RESULTS_HEADER.md")).read()
    with open(RESULTS, "w") as f:
        f.write(header.rstrip() + "\n\n" + section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
