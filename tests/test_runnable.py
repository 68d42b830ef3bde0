"""Every guide, every example and the demo run end to end in fast mode, so they never rot."""

import glob
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "guides", "*.py"))) + sorted(
    glob.glob(os.path.join(ROOT, "examples", "*.py"))
)


def _run(cmd, tmp_path):
    """Runs `cmd` with `--fast --out <tmp_path>/out` from an empty working folder, which must
    stay empty (nothing is written into the current folder unasked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_CONVX_")}
    env.update(KERAS_BACKEND=keras.backend.backend(), MPLBACKEND="Agg")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([*cmd, "--fast", "--out", str(tmp_path / "out")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not any(cwd.iterdir()), f"{cmd} wrote into the working folder: {list(cwd.iterdir())}"
    return proc.stdout


def test_there_are_guides_and_examples():
    names = [os.path.basename(s) for s in SCRIPTS]
    assert any(s.startswith(os.path.join(ROOT, "guides")) for s in SCRIPTS), names
    assert any(s.startswith(os.path.join(ROOT, "examples")) for s in SCRIPTS), names


# Each script runs once in the suite (fast mode: a smoke run that keeps it from rotting), on
# the backend named here.
# What a script does on the other backends is covered there by the tests: every layer is
# swept on every backend (tests/test_robustness.py, the layer contracts), every application
# trains and round-trips on every backend (tests/applications/), and the demo (torch) trains
# the models the family guides train. Each runs on torch (no compile step: the cheapest
# runs; the getting-started, log-polar, PDE and pairwise guides took 10-15 s each there, fast
# mode, against 19-34 s on jax), except the distributed guide, on jax (Keras has no torch
# distribution API; its TensorFlow route is tests/test_distribution.py's). The export guide
# exports what test_export's every-family tests export on all three backends; the pruning
# guides' steps are swept by tests/test_pruning.py and tests/test_prunable.py on every
# backend; the multi-process guide's three routes are tests/test_multi_process.py's.
RUNS_ON = {
    "guides/distributed_training.py": ("jax",),
    "guides/equivariance_any_angle.py": ("torch",),
    "guides/equivariant_convolution.py": ("torch",),
    "guides/export_and_deploy.py": ("torch",),
    "guides/getting_started.py": ("torch",),
    "guides/log_polar_convolution.py": ("torch",),
    "guides/multi_process_training.py": ("torch",),
    "guides/pairwise_consistency.py": ("torch",),
    "guides/pde_layers.py": ("torch",),
    "guides/pruning_any_model.py": ("torch",),
    "guides/shared_filter_bases.py": ("torch",),
    "guides/synaptic_pruning.py": ("torch",),
    "examples/rotated_digits.py": ("torch",),
}


def test_every_script_says_where_it_runs():
    assert sorted(RUNS_ON) == sorted(os.path.relpath(s, ROOT) for s in SCRIPTS)
    # a misspelt backend would skip its script everywhere, silently
    known = {"tensorflow", "jax", "torch"}
    wrong = {s: b for s, b in RUNS_ON.items() if not b or not set(b) <= known}
    assert not wrong, f"RUNS_ON names no backend or an unknown one: {wrong}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_runs_and_writes_a_plot(script, tmp_path):
    backends = RUNS_ON[os.path.relpath(script, ROOT)]
    if keras.backend.backend() not in backends:
        pytest.skip(f"runs on {backends} in the suite (see RUNS_ON)")
    _run([sys.executable, script], tmp_path)
    assert glob.glob(os.path.join(tmp_path, "out", "**", "*.png"), recursive=True), "no plot written"


# The demo trains, in one table, the models the family guides train on every backend; its own
# run (the table, the plots, results.json) is checked once, on torch: its fast run takes 17 s
# there against 131 s on jax (`make demo`'s backend), where eight models' XLA compilations
# dominate one-epoch fits. The demo's builders are plain Keras models of the swept layers, and
# its synaptic model's `SynapticPruning` callback is swept by tests/test_pruning.py on every
# backend.
DEMO_BACKEND = "torch"


@pytest.mark.skipif(keras.backend.backend() != DEMO_BACKEND,
                    reason=f"the demo's run is checked on {DEMO_BACKEND} (see DEMO_BACKEND)")
def test_demo_prints_table_and_writes_plots(tmp_path):
    out = _run([sys.executable, "-m", "keras_convx.demo"], tmp_path)
    assert "| model" in out and "acc 90°" in out
    for name in ("accuracy.png", "samples.png", "results.json"):
        assert (tmp_path / "out" / name).exists(), name


_HELP_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for script in json.loads(sys.argv[1]):
    sys.argv = [script, "--help"]
    out, code = io.StringIO(), None
    with contextlib.redirect_stdout(out):
        try:
            if script.startswith("-m "):
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    results[script] = [code, out.getvalue()]
print(json.dumps(results))
"""
HELP_SCRIPTS = [*SCRIPTS, "-m keras_convx.demo"]


@pytest.fixture(scope="module")
def help_texts():
    """Every script's `--help`, run in ONE fresh process (argparse exits before any work: one
    interpreter's imports instead of one per script)."""
    import json  # noqa: PLC0415

    proc = subprocess.run([sys.executable, "-c", _HELP_ALL, json.dumps(HELP_SCRIPTS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND="jax"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="--help is the same on every "
                    "backend: checked once (under jax)")
@pytest.mark.parametrize("script", HELP_SCRIPTS,
                         ids=lambda p: os.path.relpath(p, ROOT) if os.path.isabs(p) else p)
def test_help_names_fast_and_out(script, help_texts):
    code, text = help_texts[script]
    assert code == 0, f"--help exited with {code}, not argparse's 0 (None: it did not exit)"
    assert "--fast" in text and "--out" in text, text[-500:]
