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


# Scripts whose run would repeat, on some backends, what another backend's run or a test
# already covers, with the backends they run on in the suite:
# - the distributed guide demonstrates with JAX under torch (Keras has no torch distribution
#   API), the very run of the jax job;
# - the export guide exports the every-family model the way test_export's every-family
#   tests do on all three backends; its own run (training, timing, plot) is shown once, on
#   the backend its "Run:" line names;
# - the any-model pruning guide's steps (make_prunable, the schedule, strip, compact) are
#   swept by tests/test_prunable.py on every backend; its run is shown once, on torch;
# - the multi-process guide's three routes are tests/test_multi_process.py's, on every
#   backend; its run is shown once, on torch.
RUNS_ON = {
    "guides/distributed_training.py": ("jax", "tensorflow"),
    "guides/export_and_deploy.py": ("torch",),
    # tests/test_prunable.py runs every step of it on all three backends
    "guides/pruning_any_model.py": ("torch",),
    # tests/test_multi_process.py trains the every-family model over processes on all
    # three backends; the guide's run (digits, the control, the plot) is shown once
    "guides/multi_process_training.py": ("torch",),
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_runs_and_writes_a_plot(script, tmp_path):
    backends = RUNS_ON.get(os.path.relpath(script, ROOT), (keras.backend.backend(),))
    if keras.backend.backend() not in backends:
        pytest.skip(f"runs on {backends} in the suite (see RUNS_ON)")
    _run([sys.executable, script], tmp_path)
    assert glob.glob(os.path.join(tmp_path, "out", "**", "*.png"), recursive=True), "no plot written"


# The demo trains, in one table, the models the family guides train on every backend; its own
# run (the table, the plots, results.json) is checked on the backend `make demo` uses.
DEMO_BACKEND = "jax"


@pytest.mark.skipif(keras.backend.backend() != DEMO_BACKEND,
                    reason=f"the demo's run is checked on {DEMO_BACKEND}, `make demo`'s backend")
def test_demo_prints_table_and_writes_plots(tmp_path):
    out = _run([sys.executable, "-m", "keras_convx.demo"], tmp_path)
    assert "| model" in out and "acc 90°" in out
    for name in ("accuracy.png", "samples.png", "results.json"):
        assert (tmp_path / "out" / name).exists(), name


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="--help is the same on every "
                    "backend: checked once (under jax)")
@pytest.mark.parametrize("script", [*SCRIPTS, "-m keras_convx.demo"],
                         ids=lambda p: os.path.relpath(p, ROOT) if os.path.isabs(p) else p)
def test_help_names_fast_and_out(script):
    cmd = [sys.executable, *(script.split() if script.startswith("-m") else [script]), "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND="jax"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--fast" in proc.stdout and "--out" in proc.stdout
