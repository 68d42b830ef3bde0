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
RAW = os.path.join(HERE, "results.json")  # raw rows per backend; re-running one backend keeps the others


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
    # "torch:opt-in" runs torch with the opt-in (torch.compile) fast paths allowed.
    name, _, flag = backend.partition(":")
    env = dict(os.environ, KERAS_BACKEND=name, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_CONVX_OPT_IN="1" if flag == "opt-in" else "0")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *extra]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(l.split(":", 1) for l in f.read().split("\n\n")[0].splitlines() if ":" in l)
        info = {k.strip(): v.strip() for k, v in info.items()}
        # Virtual machines often report only "AMD EPYC": the family and the widest vector
        # ISA tell apart machines whose compute/memory balance (hence the ratios) differ.
        isa = "AVX-512" if "avx512f" in info.get("flags", "").split() else (
            "AVX2" if "avx2" in info.get("flags", "").split() else "no AVX2")
        cpu = f"{info.get('model name', cpu)} (family {info.get('cpu family', '?')}, {isa})"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch", "torch:opt-in"],
                        help="backends; 'torch:opt-in' allows the torch.compile fast paths")
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--tf-xla", action="store_true")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite RESULTS.md from benchmarks/results.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path[:0] = [HERE, ROOT]
    from cases import CASES

    import keras

    stored = {}
    if os.path.exists(RAW):
        with open(RAW) as f:
            stored = json.load(f)
    stamp = datetime.date.today().isoformat()
    mode = "tf.function + XLA" if args.tf_xla else "tf.function (graph, no XLA)"
    for backend in [] if args.render else args.backends:
        common = ["--repeats", str(args.repeats)] + (["--tf-xla"] if args.tf_xla else [])
        if args.cases:
            common += ["--cases", *args.cases]
        rows = _spawn(backend, common)
        for row in rows:
            case = next(c for c in CASES if c["name"] == row["case"])
            row["memory"] = {}
            if not args.no_memory:
                for variant in ["layer", *case["baselines"]]:
                    row["memory"][variant] = _spawn(backend, ["--cases", case["name"], "--memory", variant])
            row.update(date=stamp, repeats=args.repeats, machine=_machine(), keras=keras.__version__,
                       tf_mode=mode)
            stored.setdefault(backend, {})[row["case"]] = row
    if not args.render:
        with open(RAW, "w") as f:
            json.dump(stored, f, indent=1, ensure_ascii=False)
    section = render(stored, CASES)
    header = open(os.path.join(HERE, "RESULTS_HEADER.md")).read()
    with open(RESULTS, "w") as f:
        f.write(header.rstrip() + "\n\n" + section)
    print(section)


def render(stored, cases):
    """The RESULTS.md table from the stored raw rows (one line per case and backend)."""
    lines = []
    meta = set()
    for case in cases:
        for backend, rows in stored.items():
            row = rows.get(case["name"])
            if row is None:
                continue
            ms = row["ms"]
            baselines = [b for b in case["baselines"] if b in ms]
            ratios = "; ".join(f"**{ms['layer'] / ms[b]:.2f}×** {b}" for b in baselines)
            base_ms = "; ".join(f"{b} {ms[b]:.1f}" for b in baselines)
            memory = row.get("memory") or {}
            mem = "; ".join(f"{k} {v:.0f}" for k, v in memory.items()) if memory else "—"
            lines.append(f"| {case['name']} | {backend} | {ms['layer']:.1f} | {base_ms} | {ratios} | {mem} |")
            meta.add((row["date"], row["machine"], row["keras"], row["repeats"], row["tf_mode"]))
    runs = "\n".join(
        f"- {date}: {machine}; keras {kv}; median of {rep} after warm-up; tensorflow: {tf_mode}."
        for date, machine, kv, rep, tf_mode in sorted(meta)
    )
    table = "\n".join([
        "| case | backend | layer ms | baselines ms | layer / baseline | peak RSS growth MB |",
        "|---|---|---|---|---|---|",
        *lines,
    ])
    return (
        "## Results\n\nForward+backward (input and weight gradients) per step. jax: jit; torch: eager "
        "(torch:opt-in: keras_convx's opt-in torch.compile fast paths allowed).\n\n"
        f"Runs:\n{runs}\n\n{table}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
