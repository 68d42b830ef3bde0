"""Run the test suite once per Keras backend, each in its own process.

Usage: python tools/run_matrix.py [--backends tensorflow jax torch] [pytest args...]

Prints one summary line per backend and exits non-zero if any backend fails.
"""

import argparse
import os
import re
import subprocess
import sys
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS))
    args, pytest_args = parser.parse_known_args(argv)
    unknown = [b for b in args.backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; accepted: {list(ALL_BACKENDS)}")

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONHASHSEED="0")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, "-m", "pytest", "tests", *pytest_args]
        print(f"=== KERAS_BACKEND={backend}: {' '.join(cmd[1:])}", flush=True)
        start = time.time()
        proc = subprocess.run(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        elapsed = time.time() - start
        sys.stdout.write(proc.stdout)
        tail = [l for l in proc.stdout.strip().splitlines() if l.strip()]
        summary = tail[-1] if tail else "(no output)"
        summary = re.sub(r"=+", "", summary).strip()
        results.append((backend, proc.returncode, summary, elapsed))

    print("\n=== test matrix summary")
    for backend, rc, summary, elapsed in results:
        status = "PASS" if rc == 0 else "FAIL"
        print(f"{backend:<11} {status}  {summary}  [{elapsed:.0f} s]")
    total = sum(r[3] for r in results)
    print(f"total {total:.0f} s")
    return 0 if all(r[1] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
