"""tools/run_matrix.py, the runner behind `make test`: its plan of pytest processes."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ["tensorflow", "jax", "torch"]


def _runner():
    spec = importlib.util.spec_from_file_location(
        "run_matrix", os.path.join(ROOT, "tools", "run_matrix.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recorded(backend):
    with open(os.path.join(_runner().DURATIONS, f"{backend}.json")) as f:
        return json.load(f)


def test_every_backend_has_recorded_durations():
    """Without a record pytest-split cuts a backend by test count, not time."""
    for backend in BACKENDS:
        durations = _recorded(backend)
        assert len(durations) > 500 and all(v >= 0 for v in durations.values()), backend


def test_split_plan_covers_every_group_once_longest_first():
    runner = _runner()
    jobs = runner.plan_jobs(BACKENDS, 2, store=False)
    assert sorted((backend, extra[3]) for _, backend, extra, _ in jobs) == sorted(
        (b, str(g)) for b in BACKENDS for g in (1, 2))
    for label, backend, extra, _ in jobs:
        assert extra[:2] == ["--splits", "2"] and extra[extra.index("--durations-path") + 1] \
            == os.path.join(runner.DURATIONS, f"{backend}.json"), label
    estimates = [estimate for *_, estimate in jobs]
    assert estimates == sorted(estimates, reverse=True) and estimates[0] > 0
    # the longest backend's groups first (recorded: jax's)
    longest = max(BACKENDS, key=runner.recorded_seconds)
    assert {jobs[0][1], jobs[1][1]} == {longest}


def test_unsplit_and_store_plans():
    runner = _runner()
    assert [extra for _, _, extra, _ in runner.plan_jobs(["jax"], 1, store=False)] == [[]]
    (_, _, extra, _), = runner.plan_jobs(["jax"], 2, store=True)  # stores whole runs
    assert "--store-durations" in extra and "--splits" not in extra
    assert "--clean-durations" in extra  # a whole run replaces the record
    (_, _, extra, _), = runner.plan_jobs(["jax"], 2, store=True, selective=True)
    assert "--clean-durations" not in extra  # a selection (-k, a path) merges into it


@pytest.mark.parametrize("argv, message", [(["--splits", "0"], "--splits"),
                                           (["--jobs", "0"], "--jobs"),
                                           (["--backends", "numpy"], "unknown backend"),
                                           (["--backends", "jax", "jax"], "twice")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        _runner().main(argv)
    assert message in capsys.readouterr().err


def test_an_empty_group_passes_only_beside_a_passing_one():
    runner = _runner()
    finished = {"jax 1/2": ("jax 1/2", 5, "no tests ran", 1.0),
                "jax 2/2": ("jax 2/2", 0, "3 passed", 1.0),
                "torch 1/2": ("torch 1/2", 5, "no tests ran", 1.0),
                "torch 2/2": ("torch 2/2", 5, "no tests ran", 1.0),
                "tensorflow": ("tensorflow", 5, "no tests ran", 1.0)}
    codes = {label: runner.empty_group_passes(result, finished)[1]
             for label, result in finished.items()}
    assert codes == {"jax 1/2": 0, "jax 2/2": 0, "torch 1/2": 5, "torch 2/2": 5,
                     "tensorflow": 5}


# Modules whose module-scoped fixture starts processes (50-140 s): a split group boundary
# inside one would run the fixture in both groups.
_FIXTURE_MODULES = ("tests/test_distribution.py", "tests/test_multi_process.py")


def test_no_split_boundary_falls_inside_a_module_with_an_expensive_fixture():
    """pytest-split's `duration_based_chunks` cuts the collection order (files by name, as
    pytest collects them) where the recorded time reaches half; that point must not fall
    strictly inside a module above (after refreshing the records, check this again)."""
    for backend in BACKENDS:
        durations = _recorded(backend)
        per_file = {}
        for nodeid, seconds in durations.items():
            path = nodeid.split("::")[0]
            per_file[path] = per_file.get(path, 0.0) + seconds
        half, start = sum(per_file.values()) / 2, 0.0
        for path in sorted(per_file):
            end = start + per_file[path]
            if path in _FIXTURE_MODULES:
                assert not start < half < end, (backend, path, start, half, end)
            start = end
