"""The live view (``ftbridge status --watch``) as a person reads it on a fixed-size console,
at several states of a store filled through the ``SqlStore`` API; the view model's pure
parts; the one-shot table when stdout is not a terminal."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bridge.cli import main
from bridge.views.board import (
    JobRecord,
    Point,
    Pulse,
    Snapshot,
    board,
    headline_keys,
    progress,
    sparkline,
)
from bridge.views.live import render, watch
from bridge.views.reader import BoardReader
from tests.views_store import NOW, Scenario


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path / "state.db")
    s.start()
    yield s
    s.close()


def screen(reader: BoardReader, *, pulse: Pulse | None = None, width: int = 220) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    console.print(render(board(reader.snapshot(), now=NOW + 10, pulse=pulse)))
    return console.export_text()


def line_of(text: str, job_id: str) -> str:
    return next(line for line in text.splitlines() if f" {job_id} " in line)


def test_a_running_job_shows_its_progress_loss_curve_and_lag(scenario: Scenario) -> None:
    text = screen(BoardReader(scenario.store.engine))
    sft = line_of(text, "ftjob-sft")
    assert "running" in sft and "gpt-4.1" in sft and "openai" in sft
    assert "12/30" in sft, "steps logged to W&B / total steps"
    assert "0.1429" in sft, "latest train loss (step 14, stored)"
    assert "0.1833" in sft, "latest valid loss (step 12)"
    assert any(c in sft for c in "▁▂▃▄▅▆▇█"), "a sparkline of the loss"
    assert "2 rows" in sft, "two rows stored but not logged yet"
    assert "/runs/wandb/offline-run-sft" in sft
    assert "4 job(s), 2 active" in text


def test_active_jobs_come_first_then_newest(scenario: Scenario) -> None:
    text = screen(BoardReader(scenario.store.engine))
    order = [j for j in ("ftjob-sft", "ft-rft", "ftjob-dpo", "ftjob-old") if j in text]
    positions = [text.index(f" {j} ") for j in order]
    assert positions == sorted(positions)
    assert "0/?" in line_of(text, "ft-rft"), "queued, no total known yet"


def test_the_view_follows_the_store(scenario: Scenario) -> None:
    reader = BoardReader(scenario.store.engine)
    screen(reader)
    scenario.advance()
    text = screen(reader)
    sft = line_of(text, "ftjob-sft")
    assert "succeeded" in sft and "30/30" in sft and "in sync" in sft
    rft = line_of(text, "ft-rft")
    assert "running" in rft and "8/40" in rft
    assert "reward" in rft, "an RFT job shows its reward, having no loss"
    assert "together" in rft
    assert "https://wandb.ai/team/fine-tunes/runs/ft-rft" in rft
    assert text.index(" ft-rft ") < text.index(" ftjob-sft "), "the one still active first"
    assert "1 active" in text


def test_the_run_url_is_a_terminal_hyperlink(scenario: Scenario) -> None:
    scenario.advance()
    out = io.StringIO()
    console = Console(file=out, width=220, force_terminal=True, color_system="truecolor")
    console.print(render(board(BoardReader(scenario.store.engine).snapshot(), now=NOW)))
    assert "\x1b]8;" in out.getvalue() and "wandb.ai/team/fine-tunes/runs/ft-rft" in out.getvalue()


def test_failing_webhook_targets_and_the_pulse_are_in_the_header(scenario: Scenario) -> None:
    engine = scenario.store.engine
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE webhook_deliveries SET state='failed', attempts=5, last_status=500 "
            "WHERE id IN (SELECT id FROM webhook_deliveries LIMIT 2)"
        )
    pulse = Pulse(
        cycles_ok=7, cycles_failed=1, mean_cycle_seconds=0.25, api_errors=3, wandb_errors=0
    )
    text = screen(BoardReader(engine), pulse=pulse)
    assert "2 failed" in text and "target env-1" in text and "HTTP 500" in text
    assert "7 ok, 1 failed, mean 0.25 s" in text and "API errors: 3" in text
    without = screen(BoardReader(engine))
    assert "not in the store" in without


def test_watch_refreshes_until_told_and_leaves_the_last_frame(scenario: Scenario) -> None:
    out = io.StringIO()
    console = Console(file=out, width=220, force_terminal=True)
    frames = {"n": 0}

    def until() -> bool:
        frames["n"] += 1
        if frames["n"] == 2:
            scenario.advance()
        return frames["n"] >= 4

    watch(scenario.store.engine, console, until=until, refresh=0.01)
    assert frames["n"] == 4
    assert "8/40" in out.getvalue(), "a frame after the store changed"


def test_status_watch_is_the_table_when_not_a_terminal(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("FTBRIDGE_DATABASE_URL", scenario.url)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["status", "--watch"]) == 0
    out = capsys.readouterr().out
    assert "4 tracked job(s)" in out and "12/30" in out


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], ""), ([1.0], "▄"), ([3.0, 2.0, 1.0], "█▅▁"), ([1.0, float("nan"), 2.0], "▁█")],
)
def test_sparkline(values: list[float], expected: str) -> None:
    assert sparkline(values) == expected


def test_sparkline_is_at_most_its_width() -> None:
    line = sparkline([float(i) for i in range(1000)], width=10)
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"


def test_progress_and_headline_keys() -> None:
    assert progress(12, 30) == pytest.approx(0.4)
    assert progress(3, None) is None and progress(50, 40) == 1.0
    together = [Point(1, {"train/loss": 1.0, "eval/loss": 1.2})]
    assert headline_keys(together) == ("loss", "train/loss", "eval/loss")
    rft = [Point(1, {"train_reward_mean": 0.2, "valid_reward_mean": 0.1})]
    assert headline_keys(rft) == ("reward", "train_reward_mean", "valid_reward_mean")


def test_a_skipped_run_shows_the_training_progress() -> None:
    record = JobRecord(
        job_id="ftjob-native",
        source="openai",
        status="running",
        job={"model": "m"},
        created_at=1,
        run_state="skipped",
        run_url=None,
        run_segment=None,
        steps_logged=0,
        steps_seen=7,
        total_steps=10,
    )
    view = board(Snapshot(jobs=[record]), now=2).jobs[0]
    assert view.steps_text == "7/10" and view.lag_text == "-"
    assert view.run == "OpenAI's W&B integration"
