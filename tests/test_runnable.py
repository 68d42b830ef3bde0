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
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        KERAS_CONVX_FAST="1",
        KERAS_CONVX_OUT=str(tmp_path),
        MPLBACKEND="Agg",
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_there_are_guides_and_examples():
    names = [os.path.basename(s) for s in SCRIPTS]
    assert any(s.startswith(os.path.join(ROOT, "guides")) for s in SCRIPTS), names
    assert any(s.startswith(os.path.join(ROOT, "examples")) for s in SCRIPTS), names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_runs_and_writes_a_plot(script, tmp_path):
    _run([sys.executable, script], tmp_path)
    assert glob.glob(os.path.join(tmp_path, "**", "*.png"), recursive=True), "no plot written"


def test_demo_prints_table_and_writes_plots(tmp_path):
    out = _run([sys.executable, "-m", "keras_convx.demo", "--out", str(tmp_path)], tmp_path)
    assert "| model" in out and "acc 90°" in out
    for name in ("accuracy.png", "samples.png", "results.json"):
        assert (tmp_path / name).exists(), name
