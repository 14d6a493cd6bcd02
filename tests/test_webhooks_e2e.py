"""Webhooks through the whole daemon: every observed status change of every job reaches every
target, verifiably signed, once per id; and a kill -9 with deliveries pending loses nothing."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import read_merged
from tests.conftest import BridgeProcess, wait_until
from tests.webhook_receiver import SECRET, Receiver, free_port

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]


def observed_changes(bridge: BridgeProcess) -> dict[str, list[str]]:
    """Per job, the statuses the bridge saw, in order (its ``job.status`` log lines)."""
    seen: dict[str, list[str]] = {}
    for line in bridge.logs():
        if line.get("event") == "job.status":
            seen.setdefault(line["job_id"], []).append(line["status"])
    return seen


def test_every_status_change_reaches_every_target(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [JobScenario(id="ftjob-old", n_steps=4, created_offset=-3600)], time_scale=3
    )
    # Added once the bridge is up, so that it sees each job before it ends.
    live = [
        JobScenario(
            id="ftjob-ok",
            n_steps=12,
            step_seconds=0.5,
            pause_at_step=5,
            pause_seconds=2,
            metadata={"team": "nlp"},
        ),
        JobScenario(
            id="ftjob-bad",
            n_steps=12,
            step_seconds=0.5,
            outcome="failed",
            fail_at_step=4,
            error_code="quota",
            error_message="out of credits",
        ),
        JobScenario(
            id="ftjob-stop", n_steps=12, step_seconds=0.5, outcome="cancelled", cancel_at_step=3
        ),
    ]
    with Receiver([SECRET]) as hooks, Receiver([]) as chat, Receiver([SECRET]) as nlp_only:
        toml = bridge_process(emulator).workdir / "ftbridge.toml"
        toml.write_text(
            "[[webhooks]]\n"
            f'name = "nlp"\nurl = "{nlp_only.url}"\nsecret = "{SECRET}"\n'
            'metadata = { team = "nlp" }\n'
            'event_types = ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]\n'
        )
        bridge = bridge_process(
            emulator,
            FTBRIDGE_CONFIG=str(toml),
            FTBRIDGE_WEBHOOK_URLS=hooks.url,
            FTBRIDGE_WEBHOOK_SECRET=SECRET,
            FTBRIDGE_CHAT_URLS=f"json://127.0.0.1:{chat.port}/chat",
            FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
        )
        proc = bridge.start("run")
        wait_until(lambda: bridge.all_synced(1), 60, "the bridge up and the old job synced")
        for job in live:
            emulator.add_job(job)
        wait_until(lambda: bridge.all_synced(4), 90, "every job synced")
        changes = observed_changes(bridge)
        expected = sum(len(v) for k, v in changes.items() if k != "ftjob-old")
        received = hooks.wait_for(expected, timeout=30)
        chats = chat.wait_for(expected, timeout=30)
        nlp = nlp_only.wait_for(1, timeout=30)
        assert bridge.stop(proc) == 0

    assert "ftjob-old" not in {json.loads(r.body)["data"]["id"] for r in received}, "backfill"
    assert all(r.verified for r in received), [r.problem for r in received]
    ids = Counter(r.webhook_id for r in received)
    assert len(ids) == expected and set(ids.values()) == {1}, "one delivery per event id"
    by_job: dict[str, list[str]] = {}
    for r in sorted(received, key=lambda r: json.loads(r.body)["created_at"]):
        body = json.loads(r.body)
        assert body["object"] == "event" and body["id"] == r.webhook_id
        by_job.setdefault(body["data"]["id"], []).append(body["data"]["status"])
    for job_id, statuses in changes.items():
        if job_id != "ftjob-old":
            assert sorted(by_job[job_id]) == sorted(statuses), job_id
    assert changes["ftjob-ok"][-1] == "succeeded" and "paused" in changes["ftjob-ok"]
    failed = next(json.loads(r.body) for r in received if b"job.failed" in r.body)
    assert failed["data"]["error"]["code"] == "quota"
    assert failed["data"]["previous_status"] == "running"

    assert len(chats) == expected
    failed_chat = next(
        json.loads(c.body) for c in chats if b"ftjob-bad" in c.body and b"fail" in c.body
    )
    assert "out of credits" in failed_chat["message"]

    assert [json.loads(r.body)["data"]["id"] for r in nlp] == ["ftjob-ok"]
    assert json.loads(nlp[0].body)["type"] == "fine_tuning.job.succeeded"

    alerts = read_merged(bridge.wandb_dir, "ftjob-bad").alerts
    assert len(alerts) == 1 and "out of credits" in alerts[0]["text"]
    for secret_free in (bridge.raw_log(),):
        assert SECRET not in secret_free


def test_kill_9_with_deliveries_pending_delivers_them_after_restart_with_the_same_ids(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [JobScenario(id="ftjob-old", n_steps=4, created_offset=-3600)], time_scale=3
    )
    port = free_port()  # the receiver is down at first
    bridge = bridge_process(
        emulator,
        FTBRIDGE_WEBHOOK_URLS=f"http://127.0.0.1:{port}/hook",
        FTBRIDGE_WEBHOOK_SECRET=SECRET,
        FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
    )
    proc = bridge.start("run")
    wait_until(lambda: bridge.all_synced(1), 60, "the bridge up")
    emulator.add_job(JobScenario(id="ftjob-k", n_steps=6, step_seconds=0.5))
    wait_until(lambda: bridge.all_synced(2), 60, "the job synced")

    def attempted_ids() -> set[str]:
        store = bridge.store()
        try:
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT event_id, attempts, state FROM webhook_deliveries")
                ).all()
        finally:
            store.close()
        return {r.event_id for r in rows if r.attempts >= 1 and r.state == "pending"}

    wait_until(lambda: len(attempted_ids()) >= 4, 30, "every delivery tried and failed once")
    pending = attempted_ids()
    bridge.stop(proc, signal.SIGKILL)

    with Receiver([SECRET], port=port) as hooks:
        second = bridge.start("run")
        received = hooks.wait_for(len(pending), timeout=60)
        assert bridge.stop(second) == 0
    assert {r.webhook_id for r in received} == pending
    assert all(r.verified for r in received)
