"""Faults of the fine-tuning API, through the whole daemon: 429 with retry-after and 5xx on a
share of requests, requests that time out, and the API down for a while. In the end every
step is in W&B and every status change reached the webhook receiver; during an outage the
request rate stays within what the backoff schedule allows, and the log says so once."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import BridgeProcess, wait_until
from tests.test_e2e import assert_history_matches, expected_rows
from tests.test_webhooks_e2e import observed_changes
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

INTERVAL = 0.5
BACKOFF_MAX = 4.0


def hook_env(receiver: Receiver) -> dict[str, str]:
    return {
        "FTBRIDGE_WEBHOOK_URLS": receiver.url,
        "FTBRIDGE_WEBHOOK_SECRET": SECRET,
        "FTBRIDGE_WEBHOOK_ALLOW_PRIVATE": "true",
    }


def wait_for_requests(emulator: Emulator, more: int, timeout: float = 60) -> None:
    """Let the bridge make ``more`` API requests (a phase measured in requests, not time)."""
    target = emulator.request_count + more
    wait_until(lambda: emulator.request_count >= target, timeout, f"{more} more API requests")


def lines(bridge: BridgeProcess, event: str, level: str | None = None) -> list[dict[str, Any]]:
    return [
        line
        for line in bridge.logs()
        if line.get("event") == event and (level is None or line.get("level") == level)
    ]


def assert_every_step_once(bridge: BridgeProcess, emulator: Emulator, job_id: str) -> None:
    merged = read_merged(bridge.wandb_dir, job_id)
    assert_history_matches(merged.history, expected_rows(emulator, job_id))
    steps = [s for path in find_run_files(bridge.wandb_dir, job_id) for s in read_run(path).steps]
    assert len(steps) == len(set(steps)), f"{job_id}: a step written twice"
    assert merged.exit_code == 0


def assert_changes_delivered(bridge: BridgeProcess, hooks: Receiver, job_ids: list[str]) -> None:
    """Every status change the bridge observed for these jobs reached the receiver, signed."""
    changes = observed_changes(bridge)
    expected = sum(len(changes[j]) for j in job_ids)
    received = hooks.wait_for(expected, timeout=30)
    assert all(r.verified for r in received), [r.problem for r in received]
    by_job: dict[str, list[str]] = {}
    for r in received:
        data = json.loads(r.body)["data"]
        by_job.setdefault(data["id"], []).append(data["status"])
    for job_id in job_ids:
        assert sorted(by_job[job_id]) == sorted(changes[job_id]), job_id
        assert changes[job_id][-1] == "succeeded"
    assert len(Counter(r.webhook_id for r in received)) == expected


def most_cycles(window: float, interval: float, backoff_max: float) -> int:
    """The most failing cycles the backoff schedule allows in ``window`` seconds: after the
    n-th failure in a row the next cycle waits at least half of min(backoff_max,
    interval * 2**n) (the jitter takes off at most half), and never less than an interval."""
    count, failures, at = 1, 1, 0.0
    while True:
        at += max(interval, 0.5 * min(backoff_max, interval * 2**failures))
        if at > window:
            return count
        count += 1
        failures += 1


def test_429_5xx_and_timeouts_on_a_share_of_requests_lose_nothing(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [JobScenario(id="ftjob-old", n_steps=6, created_offset=-3600)], time_scale=5
    )
    live = [
        JobScenario(
            id=f"ftjob-flaky{i}",
            n_steps=50,
            step_seconds=1.0,
            with_validation_file=i == 0,
            validate_seconds=1,
            queue_seconds=1,
        )
        for i in range(3)
    ]
    with Receiver([SECRET]) as hooks:
        bridge = bridge_process(
            emulator,
            FTBRIDGE_LOG_LEVEL="debug",  # every failed cycle, to see each kind of fault
            FTBRIDGE_MAX_RETRIES="1",  # the SDK's own retry, then the bridge's backoff
            FTBRIDGE_REQUEST_TIMEOUT="1",
            FTBRIDGE_BACKOFF_MAX="2",
            **hook_env(hooks),
        )
        proc = bridge.start("run")
        wait_until(lambda: bridge.all_synced(1), 60, "the bridge up and the old job synced")
        for job in live:
            emulator.add_job(job)
        # Phases are measured in requests the bridge makes, so that each fault is met often
        # whatever the speed of the machine.
        emulator.set_faults(error_rate=0.3, status=429, retry_after=0.2)
        wait_for_requests(emulator, 40)
        emulator.set_faults(error_rate=0.3, status=502)
        wait_for_requests(emulator, 40)
        emulator.set_faults(latency=1.5)  # every request outlasts FTBRIDGE_REQUEST_TIMEOUT
        wait_for_requests(emulator, 4)
        emulator.set_faults()
        wait_until(lambda: bridge.all_synced(4), 90, "every job synced")
        assert_changes_delivered(bridge, hooks, [j.id for j in live if j.id])
        assert bridge.stop(proc) == 0

    log = bridge.raw_log()
    for needle in ("HTTP 429", "HTTP 502", "timed out"):
        assert needle in log, f"the faults were met: {needle}"
    assert "Traceback" not in log and not lines(bridge, "cycle.crashed")
    for job_id in ["ftjob-old", *(j.id for j in live if j.id)]:
        assert_every_step_once(bridge, emulator, job_id)


def test_outages_back_off_are_said_once_and_lose_nothing(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    jobs = [
        JobScenario(id=f"ftjob-out{i}", n_steps=80, validate_seconds=0, queue_seconds=0)
        for i in range(2)
    ]
    # Three emulated seconds per real second: the jobs train for about 27 s, across the
    # outages below.
    emulator = start_emulator(jobs, time_scale=3)
    with Receiver([SECRET]) as hooks:
        bridge = bridge_process(
            emulator,
            FTBRIDGE_MAX_RETRIES="0",  # one request per failing cycle: the backoff is the bridge's
            FTBRIDGE_REQUEST_TIMEOUT="1",
            FTBRIDGE_BACKOFF_MAX=str(BACKOFF_MAX),
            **hook_env(hooks),
        )
        proc = bridge.start("run")

        def steps_sent(n: int) -> Callable[[], bool]:
            def check() -> bool:
                if not bridge.started():
                    return False
                store = bridge.store()
                try:
                    return all(
                        sum(e.state != "new" for e in store.events(j.id or "") if e.step) >= n
                        for j in jobs
                    )
                finally:
                    store.close()

            return check

        wait_until(steps_sent(3), 60, "the first steps handed to W&B")

        # 1. Down (503 to everything). Issue 7 asks for a minute; 10 s here keeps the suite
        # fast and is already five times the longest backoff: the same schedule, compressed.
        before = emulator.counts
        started = time.monotonic()
        emulator.set_faults(down=True)
        time.sleep(10)
        window = time.monotonic() - started
        during = emulator.counts - before
        emulator.set_faults()
        wait_until(lambda: len(lines(bridge, "cycle.recovered")) >= 1, 30, "recovery")

        # 2. Every request times out (latency > FTBRIDGE_REQUEST_TIMEOUT).
        wait_until(steps_sent(20), 60, "more steps after the first outage")
        emulator.set_faults(latency=1.5)
        wait_until(lambda: len(lines(bridge, "cycle.failed")) >= 2, 30, "timeouts noticed")
        time.sleep(3)
        emulator.set_faults()
        wait_until(lambda: len(lines(bridge, "cycle.recovered")) >= 2, 30, "second recovery")

        # 3. 429 to everything with a retry-after longer than the backoff would wait.
        before_429 = emulator.counts
        started = time.monotonic()
        emulator.set_faults(error_rate=1.0, status=429, retry_after=2)
        time.sleep(5)
        window_429 = time.monotonic() - started
        during_429 = emulator.counts - before_429
        emulator.set_faults()

        wait_until(lambda: bridge.all_synced(2), 90, "both jobs synced")
        assert_changes_delivered(bridge, hooks, [j.id or "" for j in jobs])
        assert bridge.stop(proc) == 0

    # No retry storm: one list request per failing cycle, and no more cycles than the
    # backoff schedule allows in the window (a poller without backoff would make
    # window / interval of them). Other requests only come from the cycle already running
    # when the outage began (events and checkpoints of each job).
    allowed = most_cycles(window, INTERVAL, BACKOFF_MAX) + 1
    assert allowed < window / INTERVAL, "the bound is tighter than polling without backoff"
    assert during["list_jobs"] <= allowed, (during, window)
    assert during.total() - during["list_jobs"] <= 4 * len(jobs), during
    assert during["list_jobs"] >= 2, "the bridge kept trying during the outage"
    # retry-after (2 s) is honoured: at most one cycle per 2 s, plus the one under way.
    assert during_429["list_jobs"] <= window_429 / 2 + 2, (during_429, window_429)

    # Said once per outage, not once per request or cycle; and said when it is over.
    failed = lines(bridge, "cycle.failed", "warning")
    assert len(failed) == 3, failed
    assert "HTTP 503" in failed[0]["error"]
    assert "timed out" in failed[1]["error"]
    assert "HTTP 429" in failed[2]["error"]
    recovered = lines(bridge, "cycle.recovered")
    assert len(recovered) == 3
    assert recovered[0]["after_failures"] >= 2, "several failed cycles, one line"
    # A job's own failures are logged only by the cycle that was running when an outage
    # began or ended, not by every failing cycle.
    assert len(lines(bridge, "job.retry_later")) <= 2 * len(jobs) * 3
    assert "Traceback" not in bridge.raw_log()
    for job in jobs:
        assert_every_step_once(bridge, emulator, job.id or "")
