"""The benchmarks (bench/) at tiny sizes, so that they cannot rot unnoticed.

Correctness only: every run written, every target figure computed. Never a time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench.api_cost import run_api_cost
from bench.backfill import _median, run_backfill
from bench.footprint import run_footprint
from bench.lag import run_lag

pytestmark = pytest.mark.e2e

HAVE_WANDBLOGGER_DEPS = all(importlib.util.find_spec(m) for m in ("numpy", "pandas"))


def test_backfill_writes_every_run(tmp_path: Path) -> None:
    only = ["ftbridge", "floor"] + (["wandblogger_lean"] if HAVE_WANDBLOGGER_DEPS else [])
    result = run_backfill(2, 5, tmp_path, only=only)
    for name in only:
        figures = result["contenders"][name]
        assert figures["exit_code"] == 0, (name, figures["problems"])
        assert figures["runs_ok"] == 2, (name, figures["problems"])
    assert result["contenders"]["floor"]["requests"] == 0, "the floor makes no API call"


def test_rounds_are_compared_by_their_median_and_their_worst_run() -> None:
    def one(wall: float, ok: int, code: int = 0) -> dict[str, object]:
        problems = [] if ok == 3 else [f"run {ok}"]
        return {
            "wall_s": wall,
            "runs_ok": ok,
            "requests": 5,
            "problems": problems,
            "exit_code": code,
        }

    merged = _median([one(9.0, 3), one(4.0, 2, 1), one(6.0, 3)])
    assert merged["wall_s"] == 6.0
    assert merged["walls_s"] == [9.0, 4.0, 6.0]
    assert merged["runs_ok"] == 2
    assert merged["exit_code"] == 1
    assert merged["problems"] == ["run 2"]


def test_api_cost_counts_idle_cycles(tmp_path: Path) -> None:
    result = run_api_cost([1], [0, 2], tmp_path)
    assert len(result["cases"]) == 4
    for case in result["cases"]:
        assert len(case["requests_per_idle_cycle"]) == 3
        assert case["by_kind"].get("list_events", 0) >= 1, "the active job is polled"


def test_lag_measures_every_row_in_its_window(tmp_path: Path) -> None:
    result = run_lag(2, 4.0, tmp_path)
    assert result["rows"] > 0
    assert result["rows"] == result["events_in_window"], "every row created in the window seen"
    assert result["p95_s"] >= 0


def test_footprint_samples_and_writes_runs(tmp_path: Path) -> None:
    result = run_footprint(4, 1, 10.0, tmp_path)
    assert result["backfill_s"] is not None
    assert result["peak_mb"] > 0
    assert len(result["soak_curve"]) >= 2
    assert result["exit_code"] == 0
    assert result["runs_written"] == 4
