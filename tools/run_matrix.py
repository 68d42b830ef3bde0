"""Run the test suite once per Keras backend, each in its own process.

Usage: python tools/run_matrix.py [--backends tensorflow jax torch] [--jobs N] [pytest args...]

`--jobs 2` runs two backends at once (the suite is mostly single-threaded compilation, so on
a 2-core machine this shortens the wall time); each backend's output is printed when it
finishes. Prints one summary line per backend and exits non-zero if any backend fails.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS))
    parser.add_argument("--jobs", type=int, default=1,
                        help="backends run at the same time (each in its own process)")
    args, pytest_args = parser.parse_known_args(argv)
    unknown = [b for b in args.backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; accepted: {list(ALL_BACKENDS)}")

    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pending = list(args.backends)
    running = []  # (backend, process, log file, start time)
    finished = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            backend = pending.pop(0)
            env = dict(os.environ, KERAS_BACKEND=backend, PYTHONHASHSEED="0")
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            cmd = [sys.executable, "-m", "pytest", "tests", *pytest_args]
            print(f"=== KERAS_BACKEND={backend}: {' '.join(cmd[1:])} (started)", flush=True)
            log = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
            running.append((backend, proc, log, time.time()))
        time.sleep(0.5)
        for entry in list(running):
            backend, proc, log, start = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            elapsed = time.time() - start
            log.seek(0)
            output = log.read()
            log.close()
            print(f"=== KERAS_BACKEND={backend}: finished in {elapsed:.0f} s", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()
            tail = [line for line in output.strip().splitlines() if line.strip()]
            summary = tail[-1] if tail else "(no output)"
            finished[backend] = (backend, proc.returncode, re.sub(r"=+", "", summary).strip(),
                                 elapsed)
    results = [finished[backend] for backend in args.backends]

    print("\n=== test matrix summary")
    for backend, rc, summary, elapsed in results:
        status = "PASS" if rc == 0 else "FAIL"
        print(f"{backend:<11} {status}  {summary}  [{elapsed:.0f} s]")
    total = sum(r[3] for r in results)
    print(f"total {total:.0f} s of test time")
    return 0 if all(r[1] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
