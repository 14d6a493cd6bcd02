"""kill -9 of the bridge at random moments, many times over one live scenario: in the end every
step is in W&B exactly once, every status change reached the webhook receiver, and the state
database is never corrupt."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import BridgeProcess, wait_until
from tests.test_e2e import assert_history_matches, expected_rows
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

KILLS = 10
SEED = 20261124


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def outbox_events(db: Path) -> dict[str, tuple[str, str]]:
    """Every webhook event the bridge committed: event id -> (job id, type)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event_id, job_id, type FROM webhook_events").fetchall()
    return {event_id: (job_id, kind) for event_id, job_id, kind in rows}


def test_ten_kill_9s_at_random_moments_lose_and_repeat_nothing(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    rng = random.Random(SEED)
    jobs = [
        JobScenario(id="ftjob-k0", n_steps=150, validate_seconds=2, queue_seconds=2),
        JobScenario(
            id="ftjob-k1",
            n_steps=120,
            outcome="failed",
            fail_at_step=90,
            error_code="quota",
            error_message="out of credits",
        ),
        JobScenario(id="ftjob-k2", n_steps=100, pause_at_step=40, pause_seconds=10),
    ]
    late = JobScenario(id="ftjob-k3", n_steps=40, with_validation_file=True)
    final_status = {"ftjob-k0": "succeeded", "ftjob-k1": "failed", "ftjob-k2": "succeeded"}
    final_status["ftjob-k3"] = "succeeded"
    # Five emulated seconds per real second: the jobs train for 20-30 s, across the kills.
    emulator = start_emulator(jobs, time_scale=5)
    with Receiver([SECRET]) as hooks:
        bridge = bridge_process(
            emulator,
            FTBRIDGE_WEBHOOK_URLS=hooks.url,
            FTBRIDGE_WEBHOOK_SECRET=SECRET,
            FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
        )
        moments: list[str] = []

        def started_more_than(count: int) -> Callable[[], bool]:
            return lambda: bridge.raw_log().count('"daemon.started"') > count

        for kill in range(KILLS):
            ready = bridge.raw_log().count('"daemon.started"')
            proc = bridge.start("run")
            # Mostly while it polls; sometimes during start-up and recovery.
            if rng.random() < 0.7:
                wait_until(started_more_than(ready), 60, "the bridge up")
                moments.append("running")
            else:
                moments.append("starting")
            time.sleep(rng.uniform(0.5, 3.0))
            assert bridge.stop(proc, signal.SIGKILL) == -signal.SIGKILL
            assert integrity(bridge.db_path) == "ok", f"after kill {kill + 1}"
            if kill == KILLS // 2:
                emulator.add_job(late)

        ready = bridge.raw_log().count('"daemon.started"')
        final = bridge.start("run")
        wait_until(started_more_than(ready), 60, "the last bridge up")
        wait_until(lambda: bridge.all_synced(4), 120, "every job synced after the kills")
        committed = outbox_events(bridge.db_path)
        wait_until(
            lambda: {r.webhook_id for r in hooks.received} >= set(committed),
            60,
            "every committed event delivered",
        )
        received = list(hooks.received)
        assert bridge.stop(final) == 0
    assert integrity(bridge.db_path) == "ok"

    # Webhooks: at least once. Every event the bridge committed arrived (an id may arrive
    # twice when a kill came between the receiver's answer and the bridge's record of it),
    # verified, and every job's final status is among them.
    assert all(r.verified for r in received), [r.problem for r in received]
    assert {r.webhook_id for r in received} == set(committed)
    bodies = {r.webhook_id: json.loads(r.body) for r in received}
    for job_id, status in final_status.items():
        statuses = [b["data"]["status"] for b in bodies.values() if b["data"]["id"] == job_id]
        assert status in statuses, (job_id, statuses)
        assert len(statuses) == len(set(statuses)) or "paused" in statuses, (
            "one event per status change",
            job_id,
            statuses,
        )

    # W&B: the merged segments hold exactly the API's metrics, each step once.
    recovered = [line for line in bridge.logs() if line.get("event") == "run.recovered"]
    for job_id, status in final_status.items():
        merged = read_merged(bridge.wandb_dir, job_id)
        assert_history_matches(merged.history, expected_rows(emulator, job_id))
        assert merged.exit_code == (0 if status == "succeeded" else 1)
        assert merged.summary["status"] == status
        # After a kill the killed segment's file holds a prefix of what it was given; the
        # next start reads it back and sends again exactly what it lacks, into a new
        # segment. So no step is in two segments.
        segments = [read_run(path) for path in find_run_files(bridge.wandb_dir, job_id)]
        seen: dict[int, int] = {}
        for index, segment in enumerate(segments):
            for step in segment.steps:
                assert step not in seen, (
                    f"{job_id}: step {step} in segments {seen[step]} and {index}",
                    [len(s.steps) for s in segments],
                    [r for r in recovered if r["job_id"] == job_id],
                    moments,
                )
                seen[step] = index
    assert len(recovered) >= 3, "kills left runs to repair"


def test_kill_9_while_sampling_then_restart_logs_one_table_and_bills_once(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    """The bridge is killed (the whole process tree) while a succeeded job's samples are
    being asked (each chat answer takes 0.4 s), and started again: in the end one samples
    table, and the chat API asked once per conversation and model, plus at most the one
    request that was under way at the kill."""
    conversations = 4
    emulator = start_emulator([JobScenario(id="ftjob-s", created_offset=-7200, n_steps=6)])
    emulator.set_faults(chat_latency=0.4)
    bridge = bridge_process(
        emulator, FTBRIDGE_EVAL_SAMPLES=str(conversations), FTBRIDGE_EVAL_MAX_TOKENS="5"
    )
    first = bridge.start("run")
    wait_until(lambda: emulator.counts["chat"] >= 3, 60, "the first chat answers")
    bridge.kill_tree(first)
    asked_before = emulator.counts["chat"]
    store = bridge.store()
    kept = len(store.sample_answers("ftjob-s"))
    store.close()
    assert asked_before - 1 <= kept <= asked_before < 2 * conversations

    again = bridge.start("run")
    wait_until(lambda: bridge.all_synced(1), 60, "the job written to its end")
    assert bridge.stop(again) == 0
    asked_after = emulator.counts["chat"] - asked_before
    assert asked_after == 2 * conversations - kept  # only what the first one did not keep
    assert emulator.counts["chat"] <= 2 * conversations + 1

    tables = [
        artifact["name"]
        for path in find_run_files(bridge.wandb_dir, "ftjob-s")
        for artifact in read_run(path).artifacts
        if artifact["type"] == "evaluation"
    ]
    assert tables == ["ftjob-s-samples"]
    run = read_merged(bridge.wandb_dir, "ftjob-s")
    assert run.exit_code == 0 and run.summary["samples/count"] == conversations
    assert "samples/stopped" not in run.summary
