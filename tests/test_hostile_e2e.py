"""End to end against a hostile fine-tuning API (tests/hostile_api.py): ``ftbridge run`` as a
subprocess keeps syncing the good jobs, says what it refused, and stops on SIGTERM within its
shutdown timeout while a slow request is still under way."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge import limits
from bridge.wandbfile import read_merged
from tests.conftest import BridgeProcess, wait_until
from tests.hostile_api import BAD_IDS, HostileAPI

pytestmark = pytest.mark.e2e

MakeBridge = Callable[..., BridgeProcess]
SHUTDOWN_TIMEOUT = 4.0


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    hostile = HostileAPI(slow_seconds=10)
    hostile.start()
    yield hostile
    hostile.stop()


def synced(bridge: BridgeProcess, *job_ids: str) -> bool:
    if not bridge.db_path.exists() or not bridge.started():
        return False
    store = bridge.store()
    try:
        states = [store.get_job(job_id) for job_id in job_ids]
    finally:
        store.close()
    return all(state is not None and state.synced for state in states)


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in bridge.logs() if line.get("event") == event]


def test_the_bridge_survives_a_hostile_api(api: HostileAPI, bridge_process: MakeBridge) -> None:
    bridge = bridge_process(
        api.base_url,
        FTBRIDGE_REQUEST_TIMEOUT="20",  # the slow job answers in 10 s: the budget, not this
        FTBRIDGE_JOB_TIME_BUDGET="3",  # long enough for every other job on a loaded machine
        FTBRIDGE_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        FTBRIDGE_MAX_PAGES="20",
    )
    proc = bridge.start("run")
    good = ("ftjob-good", "ftjob-steps", "ftjob-big", "ftjob-badfile")
    wait_until(lambda: synced(bridge, *good), 60, "the good jobs synced")
    wait_until(lambda: bool(logged(bridge, "job.slow")), 30, "the slow job named")
    cycles = len(logged(bridge, "cycle"))
    wait_until(lambda: len(logged(bridge, "cycle")) >= cycles + 3, 20, "cycles go on")

    recent = [line["duration_s"] for line in logged(bridge, "cycle")][-3:]
    assert max(recent) < 6, f"a 10 s job stretches every cycle: {recent}"

    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    took = time.monotonic() - asked
    assert code == 0
    assert took < SHUTDOWN_TIMEOUT + 2, f"SIGTERM took {took:.1f} s"
    assert api.hits.get("/v1/fine_tuning/jobs/ftjob-slow/events"), "the slow read was made"

    # What it refused, said in one line each.
    quarantined = {line["job_id"] for line in logged(bridge, "job.quarantined")}
    assert quarantined == {job_id[:80] for job_id in BAD_IDS}
    assert len(logged(bridge, "job.quarantined")) == len(BAD_IDS), "once each"
    assert len(logged(bridge, "api.listing_cut")) == 1
    retried = {line["job_id"]: line["error"] for line in logged(bridge, "job.retry_later")}
    assert "repeats ids" in retried["ftjob-endless"]
    assert "twice" in retried["ftjob-cursor"]
    assert [line["job_id"] for line in logged(bridge, "job.slow")] == ["ftjob-slow"]
    assert logged(bridge, "results.unreadable")[0]["job_id"] == "ftjob-badfile"
    assert "Traceback" not in bridge.raw_log()
    # Pages are bounded: the endless events were not read a thousand times.
    assert api.hits["/v1/fine_tuning/jobs/ftjob-endless/events"] < 200

    assert read_merged(bridge.wandb_dir, "ftjob-good").steps == [1, 2, 3]
    steps = read_merged(bridge.wandb_dir, "ftjob-steps")
    assert steps.steps == [1, 2, 3, 9, 10], "only steps in range, nothing else"
    nine = steps.history[3]
    assert nine["nested/a/b/1/c"] == 2
    assert math.isnan(nine["n"]) and nine["i"] == math.inf and nine["huge"] == math.inf
    assert "s" not in nine and nine["_step"] == 9
    big = read_merged(bridge.wandb_dir, "ftjob-big")
    message = big.summary["error_message"]
    assert len(message) <= limits.MAX_OUT_TEXT and "[truncated" in message
    store = bridge.store()
    try:
        assert store.get_job("ftjob-odd") is not None
        assert all(store.get_job(job_id) is None for job_id in BAD_IDS if len(job_id) < 128)
    finally:
        store.close()
    # ``ftbridge status`` lists what was refused, with the reason.
    status = bridge.run("status", "--json")
    assert status.returncode == 0, status.stderr
    refused = [row for row in json.loads(status.stdout) if row["status"] == "quarantined"]
    assert len(refused) == len(BAD_IDS)
    assert all(row["reason"] for row in refused)
    assert {row["job_id"] for row in refused} >= {"../x", "a/b"}
