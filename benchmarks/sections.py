"""What the stand-alone benchmark scripts share: one worker process per backend, and the
marked section of benchmarks/RESULTS_HEADER.md they rewrite (RESULTS.md re-rendered after)."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_workers(script, backends, args=(), variants=()):
    """{label: the JSON on the last stdout line of `script --worker *args`}, each backend in
    a process of its own (KERAS_BACKEND set; the label is the backend's name). `variants`:
    `(label, backend, {environment variable: value})` runs, each after the plain ones, for
    the backends asked for (a process-level setting such as the allocator's)."""
    results = {}
    runs = [(backend, backend, {}) for backend in backends]
    runs += [v for v in variants if v[1] in backends]
    for label, backend, extra in runs:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **extra)
        out = subprocess.run([sys.executable, os.path.abspath(script), "--worker", *args],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             check=True).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    return results


def write_section(section, begin, end):
    """Replaces the text between `begin` and `end` in RESULTS_HEADER.md by `section` (which
    carries both markers; placed before "## Results" the first time), then re-renders
    RESULTS.md (`run.py --render`)."""
    path = os.path.join(HERE, "RESULTS_HEADER.md")
    text = open(path).read()
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    elif "## Results" in text:
        text = text.replace("## Results", section + "\n\n## Results", 1)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)
    subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--render"], check=True,
                   stdout=subprocess.DEVNULL)


def main(script, worker, make_section, begin, end, default_repeats, variants=()):
    """The command line of a stand-alone benchmark: `--backends`, `--repeats`; `--worker` runs
    `worker(repeats)` (in the backend's process), otherwise every backend's worker (and the
    `variants`, see `run_workers`), then the section `make_section(results)` is written and
    printed."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.repeats)
        return
    results = run_workers(script, args.backends, ["--repeats", str(args.repeats)],
                          variants)
    section = make_section(results)
    write_section(section, begin, end)
    print(section)
