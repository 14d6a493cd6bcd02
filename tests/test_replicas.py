"""Several replicas on one PostgreSQL database: jobs shared out by leases, listing done once
per cycle for the group, takeover after a kill -9, and a database outage survived."""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bridge.emulator import Emulator, JobScenario
from bridge.store import SqlStore
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import BridgeProcess, new_bridge_process, wait_until
from tests.postgres import Proxy, fresh_database
from tests.test_e2e import assert_history_matches, expected_rows
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

LEASE = 4.0
JOBS = [f"ftjob-r{i}" for i in range(9)]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def long_jobs() -> list[JobScenario]:
    return [
        JobScenario(id=job_id, n_steps=60, step_seconds=1.0, validate_seconds=0, queue_seconds=0)
        for job_id in JOBS
    ]


def replicas(
    tmp_path: Path, emulator: Emulator, database_url: str, hook_url: str, count: int = 3
) -> list[BridgeProcess]:
    shared_wandb = tmp_path / "wandb-shared"  # a volume every replica mounts
    shared_wandb.mkdir(exist_ok=True)
    made = []
    for i in range(count):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir()
        made.append(
            new_bridge_process(
                workdir,
                emulator,
                FTBRIDGE_DATABASE_URL=database_url,
                WANDB_DIR=str(shared_wandb),
                FTBRIDGE_REPLICA_ID=f"replica-{i}",
                FTBRIDGE_LEASE_SECONDS=str(LEASE),
                FTBRIDGE_WEBHOOK_URLS=hook_url,
                FTBRIDGE_WEBHOOK_SECRET=SECRET,
                FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
            )
        )
    return made


def all_synced(database_url: str) -> bool:
    try:
        store = SqlStore(database_url)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    try:
        jobs = store.all_jobs()
        return len(jobs) == len(JOBS) and all(j.synced for j in jobs)
    finally:
        store.close()


def _ts(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def ownership(processes: list[BridgeProcess]) -> dict[str, list[tuple[float, float, str]]]:
    """Per job, the (start, end, replica) spans during which a replica had its run open."""
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for process in processes:
        opened: dict[str, float] = {}
        for line in process.logs():
            event, job_id = line.get("event"), str(line.get("job_id"))
            if event == "run.opened":
                opened[job_id] = _ts(line)
            elif (
                event in ("run.finished", "job.handed_back", "job.lease_lost") and job_id in opened
            ):
                spans.setdefault(job_id, []).append(
                    (opened.pop(job_id), _ts(line), line["replica"])
                )
        for job_id, start in opened.items():  # killed while open
            spans.setdefault(job_id, []).append((start, float("inf"), f"dead:{start}"))
    return spans


def assert_every_step_once(
    wandb_dir: Path, emulator: Emulator, *, lost: frozenset[str] = frozenset()
) -> None:
    """Every step in W&B once. A step may stand in two segments only for a job whose lease
    was lost (``lost``): its successor repaired the run while the old owner still wrote, and
    W&B keeps one row per step when the segments are merged."""
    for job_id in JOBS:
        segments = [read_run(p) for p in find_run_files(wandb_dir, job_id)]
        steps = [int(row["step"]) for s in segments for row in s.history]
        if job_id not in lost:
            assert len(steps) == len(set(steps)), f"{job_id}: a step in two segments"
        merged = read_merged(wandb_dir, job_id)
        assert_history_matches(merged.history, expected_rows(emulator, job_id))
        assert merged.exit_code == 0


def test_three_replicas_share_the_jobs_and_each_step_lands_once(
    start_emulator: Callable[..., Emulator], pg_url: str, tmp_path: Path
) -> None:
    emulator = start_emulator(long_jobs(), time_scale=4)
    with Receiver([SECRET]) as hooks:
        group = replicas(tmp_path, emulator, pg_url, hooks.url)
        procs = []
        for process in group:  # one after another: each newcomer gets its share
            procs.append(process.start("run"))
            time.sleep(2)
        wait_until(lambda: all_synced(pg_url), 120, "every job synced by the group")
        time.sleep(1)
        assert [p.stop(proc) for p, proc in zip(group, procs, strict=True)] == [0, 0, 0]
        store = SqlStore(pg_url)
        with store.engine.connect() as conn:
            event_ids = {r[0] for r in conn.execute(text("SELECT event_id FROM webhook_events"))}
            leases_left = conn.execute(text("SELECT count(*) FROM leases")).scalar_one()
        store.close()
        received = hooks.wait_for(len(event_ids), timeout=30)

    assert_every_step_once(group[0].wandb_dir.parent / "wandb-shared", emulator)
    spans = ownership(group)
    for job_id, job_spans in spans.items():
        ordered = sorted(job_spans)
        for (_, end, _), (start, _, _) in itertools.pairwise(ordered):
            assert start >= end - 0.5, f"{job_id} open on two replicas at once: {ordered}"
    workers = {replica for job_spans in spans.values() for _, _, replica in job_spans}
    assert workers == {"replica-0", "replica-1", "replica-2"}, "the jobs were spread"
    counts = Counter(r.webhook_id for r in received)
    assert set(counts) == event_ids and set(counts.values()) == {1}, "each webhook once"
    assert leases_left == 0, "SIGTERM hands every lease back"
    cycles = sum(1 for p in group for line in p.logs() if line.get("event") == "cycle")
    assert emulator.counts["list_jobs"] < cycles / 2, "one replica lists for the group"


def test_a_killed_replica_is_taken_over_with_nothing_lost(
    start_emulator: Callable[..., Emulator], pg_url: str, tmp_path: Path
) -> None:
    emulator = start_emulator(long_jobs(), time_scale=3)
    with Receiver([SECRET]) as hooks:
        group = replicas(tmp_path, emulator, pg_url, hooks.url)
        procs = [p.start("run") for p in group]

        def victim_has_runs() -> bool:
            opened = [line for line in group[1].logs() if line.get("event") == "run.opened"]
            return len(opened) >= 2

        wait_until(victim_has_runs, 60, "replica-1 working on jobs")
        time.sleep(2)
        killed_at = time.time()
        group[1].stop(procs[1], signal.SIGKILL)
        wait_until(lambda: all_synced(pg_url), 150, "every job synced by the survivors")
        for i in (0, 2):
            assert group[i].stop(procs[i]) == 0
        store = SqlStore(pg_url)
        with store.engine.connect() as conn:
            event_ids = {r[0] for r in conn.execute(text("SELECT event_id FROM webhook_events"))}
        store.close()
        received = hooks.wait_for(len(event_ids), timeout=30)

    assert_every_step_once(group[0].wandb_dir.parent / "wandb-shared", emulator)
    assert {r.webhook_id for r in received} == event_ids, "every event delivered"
    orphaned = [
        job
        for job, spans in ownership(group).items()
        if any(replica.startswith("dead:") for _, _, replica in spans)
    ]
    assert orphaned, "replica-1 died with runs open"
    takeovers = [
        _ts(line) - killed_at
        for i in (0, 2)
        for line in group[i].logs()
        if line.get("event") == "run.recovered" and line.get("job_id") in orphaned
    ]
    assert takeovers, "another replica repaired and continued the dead replica's runs"
    assert min(takeovers) < LEASE + 10, f"taken over {min(takeovers):.1f} s after the kill"


def test_a_database_outage_is_waited_out(
    start_emulator: Callable[..., Emulator], pg_url: str, tmp_path: Path
) -> None:
    emulator = start_emulator(long_jobs(), time_scale=3)
    proxy = Proxy(("127.0.0.1", 5432))
    with Receiver([SECRET]) as hooks:
        group = replicas(tmp_path, emulator, proxy.url_for(pg_url), hooks.url, count=2)
        procs = [p.start("run") for p in group]
        wait_until(lambda: all(p.started() for p in group), 60, "both replicas up")
        time.sleep(3)
        proxy.cut()
        time.sleep(8)
        assert all(proc.poll() is None for proc in procs), "no replica exited"
        proxy.restore()
        wait_until(lambda: all_synced(pg_url), 150, "every job synced after the outage")
        assert [p.stop(proc) for p, proc in zip(group, procs, strict=True)] == [0, 0]
    # The outage outlasts the lease: a replica may take a job the other still holds.
    lost = frozenset(
        str(line["job_id"])
        for p in group
        for line in p.logs()
        if line.get("event") == "job.lease_lost"
    )
    assert_every_step_once(group[0].wandb_dir.parent / "wandb-shared", emulator, lost=lost)
    failed = [line for p in group for line in p.logs() if line.get("event") == "cycle.failed"]
    assert 1 <= len(failed) <= 2, "each replica said it once"
