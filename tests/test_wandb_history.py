"""bridge.wandb_history: rows handed to wandb-core in batches write what ``run.log`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import wandb

from bridge import wandb_history
from bridge.sink_wandb import quiet_settings
from bridge.wandbfile import wait_for_exit

# A gap, a row placed after a later one (W&B step 9 for training step 4), nested-looking
# names, non-finite values, an int beside floats.
ROWS: list[tuple[int, dict[str, Any]]] = [
    (0, {"train_loss": 2.5, "train_mean_token_accuracy": 0.25, "step": 0}),
    (1, {"train_loss": float("nan"), "valid_loss": float("inf"), "step": 1}),
    (5, {"train_loss": 1.25, "scores/graders/g1/train_reward_mean": 0.5, "step": 5}),
    (8, {"train_loss": 1.0, "total_steps": 12, "step": 8}),
    (9, {"valid_loss": 0.75, "step": 4}),
]


def _write(root: Path, run_id: str, *, batched: bool, later: int) -> tuple[Path, Any]:
    run: Any = wandb.init(
        id=run_id,
        dir=root,
        project="p",
        reinit="create_new",
        settings=quiet_settings(mode="offline"),
    )
    run.define_metric("step")
    run.define_metric("*", step_metric="step", step_sync=True)
    if batched:
        assert wandb_history.batch_sender(run) is not None  # the fast way, not the fallback
        wandb_history.log_rows(run, ROWS)
    else:
        for at, values in ROWS:
            run.log(dict(values), step=at, commit=True)
    # A row logged the ordinary way afterwards goes after the batch's steps, as it would
    # after the same run.log calls.
    run.log({"train_loss": 0.5, "step": later}, commit=True)
    local_step = run._local_step
    path = Path(run.settings.sync_file)
    run.finish()
    return path, local_step


def _without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in sorted(row.items()) if k not in ("_timestamp", "_runtime")}
        for row in rows
    ]


def test_batched_rows_write_what_run_log_writes(offline: None, tmp_path: Path) -> None:
    looped, looped_step = _write(tmp_path / "looped", "run-looped", batched=False, later=10)
    batched, batched_step = _write(tmp_path / "batched", "run-batched", batched=True, later=10)
    one, other = wait_for_exit(looped), wait_for_exit(batched)
    assert other.steps == one.steps == [0, 1, 5, 8, 9, 10]
    assert repr(_without_times(other.history)) == repr(_without_times(one.history))
    assert batched_step == looped_step
    summary = {k: v for k, v in one.summary.items() if not k.startswith("_")}
    assert repr(sorted(summary.items())) == repr(
        sorted((k, v) for k, v in other.summary.items() if not k.startswith("_"))
    )


def test_unknown_internals_fall_back_to_run_log() -> None:
    logged: list[tuple[dict[str, Any], int | None, bool | None]] = []

    class PlainRun:
        def log(self, data: dict[str, Any], step: int | None, commit: bool | None) -> None:
            logged.append((data, step, commit))

    assert wandb_history.batch_sender(PlainRun()) is None
    wandb_history.log_rows(PlainRun(), ROWS[:2])
    assert logged == [(ROWS[0][1], 0, True), (ROWS[1][1], 1, True)]
