"""Run the test suite once per Keras backend, each in its own process.

Usage: python tools/run_matrix.py [--backends tensorflow jax torch] [--jobs N] [--splits N]
                                  [--store-durations] [pytest args...]

`--jobs 2` runs two pytest processes at once (the suite is mostly single-threaded
compilation, so on a 2-core machine this shortens the wall time); each process's output is
printed when it finishes. `--splits N` cuts each backend's tests into N groups of about equal
time (pytest-split, from the recorded durations in tools/test_durations/<backend>.json), so
that the backends' unequal times even out over the jobs: the longest groups start first, and
each freed job takes the next (what runs long is made up for by what follows).
`--store-durations` runs each backend whole and records its durations there (refresh them
after adding slow tests; a test without a record counts as the average).
Prints one summary line per process and exits non-zero if any fails.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATIONS = os.path.join(ROOT, "tools", "test_durations")


def _durations_path(backend):
    return os.path.join(DURATIONS, f"{backend}.json")


def recorded_seconds(backend):
    try:
        with open(_durations_path(backend)) as f:
            return sum(json.load(f).values())
    except FileNotFoundError:
        return 0.0


def plan_jobs(backends, splits, store, selective=False):
    """[(label, backend, extra pytest args, estimated seconds)], longest first. `selective`:
    pytest args select tests, so a stored record is merged into, not replaced."""
    jobs = []
    for backend in backends:
        if store:
            os.makedirs(DURATIONS, exist_ok=True)
            clean = [] if selective else ["--clean-durations"]
            jobs.append((backend, backend, ["--store-durations", *clean,
                                            "--durations-path", _durations_path(backend)],
                         recorded_seconds(backend)))
        elif splits == 1:
            jobs.append((backend, backend, [], recorded_seconds(backend)))
        else:
            for group in range(1, splits + 1):
                jobs.append((f"{backend} {group}/{splits}", backend,
                             ["--splits", str(splits), "--group", str(group),
                              "--splitting-algorithm", "duration_based_chunks",
                              "--durations-path", _durations_path(backend)],
                             recorded_seconds(backend) / splits))
    return sorted(jobs, key=lambda job: -job[3])  # stable: ties keep the backends' order


def empty_group_passes(result, finished):
    """A split group that ran no test (pytest's exit code 5: a selection, -k or a path, can
    leave one group empty) passes when another group of its backend ran and passed."""
    label, code, summary, elapsed = result
    backend = label.split()[0]
    others = [r[1] for r in finished.values() if r[0] != label and r[0].split()[0] == backend]
    if code == 5 and " " in label and 0 in others:
        return label, 0, summary, elapsed
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS))
    parser.add_argument("--jobs", type=int, default=1,
                        help="pytest processes run at the same time")
    parser.add_argument("--splits", type=int, default=1,
                        help="groups each backend's tests are cut into (by recorded duration)")
    parser.add_argument("--store-durations", action="store_true",
                        help="run each backend whole and record its tests' durations")
    args, pytest_args = parser.parse_known_args(argv)
    unknown = [b for b in args.backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; accepted: {list(ALL_BACKENDS)}")
    if len(set(args.backends)) != len(args.backends):
        parser.error(f"--backends names a backend twice: {args.backends}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.splits < 1:
        parser.error(f"--splits must be >= 1, got {args.splits}")

    jobs = plan_jobs(args.backends, args.splits, args.store_durations,
                     selective=bool(pytest_args))
    order = [job[0] for job in sorted(jobs, key=lambda job: (
        args.backends.index(job[1]), job[0]))]
    pending = list(jobs)  # longest first
    running = []  # (label, process, log file, start time)
    finished = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            label, backend, extra, _ = pending.pop(0)
            env = dict(os.environ, KERAS_BACKEND=backend, PYTHONHASHSEED="0")
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            cmd = [sys.executable, "-m", "pytest", "tests", *extra, *pytest_args]
            print(f"=== KERAS_BACKEND={label}: {' '.join(cmd[1:])} (started)", flush=True)
            log = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
            running.append((label, proc, log, time.time()))
        time.sleep(0.5)
        for entry in list(running):
            label, proc, log, start = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            elapsed = time.time() - start
            log.seek(0)
            output = log.read()
            log.close()
            print(f"=== KERAS_BACKEND={label}: finished in {elapsed:.0f} s", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()
            tail = [line for line in output.strip().splitlines() if line.strip()]
            summary = tail[-1] if tail else "(no output)"
            finished[label] = (label, proc.returncode, re.sub(r"=+", "", summary).strip(),
                               elapsed)
    results = [empty_group_passes(finished[label], finished) for label in order]

    print("\n=== test matrix summary")
    for label, rc, summary, elapsed in results:
        status = "PASS" if rc == 0 else "FAIL"
        print(f"{label:<16} {status}  {summary}  [{elapsed:.0f} s]")
    total = sum(r[3] for r in results)
    print(f"total {total:.0f} s of test time")
    return 0 if all(r[1] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
