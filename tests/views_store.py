"""A state store filled through the ``SqlStore`` API for the view tests: a supervised job
running, a DPO job that succeeded, an RFT job queued then running, and one with a webhook
target failing; :class:`Scenario` moves them on step by step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.notify import OutboxWriter
from bridge.store import SqlStore
from bridge.webhooks import targets_from_settings

NOW = 1_800_000_000
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def sft_event(step: int, total: int, *, valid: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "step": step,
        "total_steps": total,
        "train_loss": round(2.0 / step, 4),
        "train_mean_token_accuracy": round(min(1.0, 0.5 + step / 100), 4),
    }
    if valid and step % 3 == 0:
        data["valid_loss"] = round(2.2 / step, 4)
        data["valid_mean_token_accuracy"] = round(min(1.0, 0.45 + step / 100), 4)
    return {"id": f"m-{step}", "type": "metrics", "created_at": NOW - 100 + step, "data": data}


def dpo_event(step: int, total: int) -> dict[str, Any]:
    event = sft_event(step, total, valid=False)
    event["data"] |= {"train_dpo_margin": step / 10, "train_chosen_logprob": -60 + step}
    return event


def rft_event(step: int, total: int) -> dict[str, Any]:
    reward = round(0.2 + step / (2 * total), 4)
    data = {
        "step": step,
        "total_steps": total,
        "scores": {
            "train_reward_mean": reward,
            "valid_reward_mean": reward - 0.05,
            "graders": [{"name": "exact", "train_reward_mean": reward}],
        },
        "train_reward_mean": reward,
        "valid_reward_mean": reward - 0.05,
    }
    return {"id": f"r-{step}", "type": "metrics", "created_at": NOW - 50 + step, "data": data}


def checkpoint_message(step: int) -> dict[str, Any]:
    return {
        "id": f"c-{step}",
        "type": "message",
        "level": "info",
        "created_at": NOW - 100 + step,
        "message": f"Checkpoint created at step {step} with Snapshot ID: ft:m:ckpt-step-{step}",
    }


def job(job_id: str, status: str, model: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "status": status, "model": model, "created_at": created, **extra}


class Scenario:
    """The store and the jobs' next steps."""

    def __init__(self, where: Path | str, *, hook_url: str = "http://127.0.0.1:9/hook") -> None:
        """``where``: a SQLite file, or a database URL."""
        self.url = where if isinstance(where, str) else f"sqlite:///{where}"
        targets = targets_from_settings([hook_url], SECRET, allow_private=True)
        self.store = SqlStore(self.url, on_change=OutboxWriter(targets, notify_backfill=True))

    def start(self) -> None:
        """ftjob-sft running at 12/30 (steps 1..12 logged, 13 and 14 waiting); ftjob-dpo done;
        ftjob-rft queued; ftjob-old failed long ago."""
        s = self.store
        s.record_job("openai", job("ftjob-old", "failed", "gpt-4o-mini", NOW - 9000))
        s.record_job(
            "openai",
            job("ftjob-dpo", "succeeded", "gpt-4.1-mini", NOW - 5000, method={"type": "dpo"}),
        )
        s.add_events("ftjob-dpo", [dpo_event(i, 20) for i in range(1, 21)])
        s.mark_sent("ftjob-dpo", {f"m-{i}": i for i in range(1, 21)})
        s.set_run("ftjob-dpo", "finished", "/runs/wandb/offline-run-dpo/run-ftjob-dpo.wandb")
        s.record_job("openai", job("ftjob-sft", "queued", "gpt-4.1", NOW - 200))
        s.record_job("openai", job("ftjob-sft", "running", "gpt-4.1", NOW - 200))
        s.add_events("ftjob-sft", [sft_event(i, 30) for i in range(1, 15)])
        s.add_events("ftjob-sft", [checkpoint_message(10)])
        s.mark_sent("ftjob-sft", {f"m-{i}": i for i in range(1, 13)})
        s.set_run("ftjob-sft", "open", "/runs/wandb/offline-run-sft/run-ftjob-sft.wandb")
        s.record_job(
            "together",
            job(
                "ft-rft",
                "queued",
                "o4-mini",
                NOW - 100,
                provider="together",
                method={"type": "reinforcement"},
            ),
        )

    def advance(self) -> None:
        """ftjob-sft reaches 30/30 and succeeds; ft-rft runs (8 of 40 steps logged)."""
        s = self.store
        s.add_events("ftjob-sft", [sft_event(i, 30) for i in range(15, 31)])
        s.mark_sent("ftjob-sft", {f"m-{i}": i for i in range(1, 31)})
        s.record_job("openai", job("ftjob-sft", "succeeded", "gpt-4.1", NOW - 200))
        s.set_run("ftjob-sft", "finished")
        rft = job(
            "ft-rft",
            "running",
            "o4-mini",
            NOW - 100,
            provider="together",
            method={"type": "reinforcement"},
        )
        s.record_job("together", rft, run_url="https://wandb.ai/team/fine-tunes/runs/ft-rft")
        s.add_events("ft-rft", [rft_event(i, 40) for i in range(1, 9)])
        s.mark_sent("ft-rft", {f"r-{i}": i for i in range(1, 9)})
        s.set_run("ft-rft", "open")

    def close(self) -> None:
        self.store.close()
