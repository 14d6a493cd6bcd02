"""The cursor rules of durability, online and offline, against in-memory edges and the real
SQLite store: W&B steps written before rows go, replays at the same steps, the server's
resume point deciding online, terminal notifications held until the run is final, and
shutdown closing runs as final or preempted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import mapping, outputs
from bridge.engine import Bridge, place_rows
from bridge.mapping import MetricRow, WandbDefaults
from bridge.memory import MemorySink, MemorySource
from bridge.notify import OutboxWriter, release_notifications
from bridge.ports import StoredEvent
from bridge.store import SqlStore
from bridge.webhooks import outbox, targets_from_settings
from tests.factories import job, metrics

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make_bridge(source: MemorySource, sink: MemorySink, store: SqlStore) -> Bridge:
    return Bridge(source, sink, store, WandbDefaults(project="p"))


def stored(event_id: str, step: int, wandb_step: int | None = None) -> StoredEvent:
    return StoredEvent("j", event_id, 0, step, metrics(event_id, step), "new", wandb_step)


def test_rows_go_to_their_step_and_fills_after_the_last_step() -> None:
    placed, steps = place_rows([stored("a", 5), stored("b", 3), stored("c", 9)], last_step=6)
    assert [(p.at, p.row.step) for p in placed] == [(7, 5), (8, 3), (9, 9)]
    assert steps == {"a": 7, "b": 8, "c": 9}


def test_a_row_sent_before_keeps_its_step_and_rows_of_one_step_merge() -> None:
    events = [stored("a", 2, wandb_step=4), stored("b", 2), stored("c", 8)]
    placed, steps = place_rows(events, last_step=6)
    assert [(p.at, p.row.step) for p in placed] == [(4, 2), (8, 8)]
    assert steps == {"a": 4, "b": 4, "c": 8}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 50), max_size=30),
    st.integers(-1, 60),
)
def test_placed_steps_rise_and_new_ones_pass_the_last_step(steps: list[int], last: int) -> None:
    events = [stored(f"e{i}", step) for i, step in enumerate(steps)]
    placed, placements = place_rows(events, last)
    ats = [p.at for p in placed]
    assert ats == sorted(set(ats))
    assert all(at > last for at in ats)
    assert {placements[e.event_id] for e in events} == set(ats)


def run_to_crash(store: SqlStore, sink: MemorySink, source: MemorySource, keep: int) -> None:
    make_bridge(source, sink, store).poll()
    sink.crash(keep=keep)


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("keep", [0, 3, 7])
def test_after_crashes_every_step_reaches_w_and_b_exactly_once(
    tmp_path: Path, online: bool, keep: int
) -> None:
    source = MemorySource()
    source.put_job(job("ftjob-a"))
    sink = MemorySink(online=online)
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    for batch in (range(1, 11), range(11, 16), range(16, 20)):
        for step in batch:
            source.add_event("ftjob-a", metrics(f"ev{step}", step))
        run_to_crash(store, sink, source, keep)
        bridge = make_bridge(source, sink, store)
        bridge.recover()
    source.jobs["ftjob-a"] = job("ftjob-a", status="succeeded")
    bridge.poll()
    placed = sink.placed_of("ftjob-a")
    assert sorted(p.row.step for p in placed) == list(range(1, 20))
    assert [p.at for p in placed] == sorted({p.at for p in placed})
    assert sink.dropped == []
    assert all(e.state == "durable" for e in store.events("ftjob-a"))


def test_online_the_local_file_never_decides(tmp_path: Path) -> None:
    """Online a crash loses what wandb-core had not uploaded; the server's resume point (not
    a segment) says what to send again."""
    source = MemorySource()
    source.put_job(job("ftjob-a"))
    for step in range(1, 9):
        source.add_event("ftjob-a", metrics(f"ev{step}", step))
    sink = MemorySink(online=True)
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    run_to_crash(store, sink, source, keep=2)
    bridge = make_bridge(source, sink, store)
    assert bridge.recover() == 0  # nothing decided before the server is asked
    assert {e.state for e in store.events("ftjob-a")} == {"sent"}
    bridge.poll()
    assert [p.row.step for p in sink.placed_of("ftjob-a")] == list(range(1, 9))
    states = {e.event_id: e.state for e in store.events("ftjob-a")}
    assert [states[f"ev{s}"] for s in (1, 2)] == ["durable", "durable"]
    assert {states[f"ev{s}"] for s in range(3, 9)} == {"sent"}


def outbox_store(tmp_path: Path) -> SqlStore:
    targets = targets_from_settings(["http://127.0.0.1:9/hook"], SECRET, allow_private=True)
    return SqlStore(
        f"sqlite:///{tmp_path / 's.db'}",
        on_change=OutboxWriter(targets, notify_backfill=True, final_wait=60),
    )


def due_bodies(store: SqlStore, now: float) -> list[dict[str, object]]:
    return [json.loads(d.body) for d in outbox.due(store.engine, now)]


def test_a_terminal_notification_waits_for_the_final_run(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    source = MemorySource()
    source.put_job(job("ftjob-a", status="running"))
    sink = MemorySink()
    bridge = make_bridge(source, sink, store)
    bridge.on_final = lambda job_id: release_notifications(store.engine, job_id)
    bridge.poll()
    assert [b["type"] for b in due_bodies(store, 1e12)] == ["fine_tuning.job.running"]
    outbox.record_attempt(
        store.engine, 1, state="delivered", attempts=1, next_attempt_at=None, status=200,
        error=None, now=0,
    )  # fmt: skip
    source.jobs["ftjob-a"] = job("ftjob-a", status="succeeded", fine_tuned_model="ft:m")
    sink.fail_open = True
    bridge.discover()
    assert due_bodies(store, 1e12) == []  # held: the run is not final yet
    sink.fail_open = False
    sink.crash()
    bridge.poll()
    (body,) = due_bodies(store, 1e12)
    assert body["type"] == "fine_tuning.job.succeeded"
    assert body["data"]["run_final"] is True  # type: ignore[index]
    run = next(r for r in sink.segments.values() if r.exit_code is not None)
    assert run.summary["fine_tuned_model"] == "ft:m"


def test_a_held_notification_goes_out_after_its_wait_saying_so(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    store.record_job("openai", job("ftjob-a", status="failed"))
    assert due_bodies(store, 1e12) == []
    assert outbox.release_expired(store.engine, now=1e12) == 1
    (body,) = due_bodies(store, 1e12)
    assert body["data"]["run_final"] is False  # type: ignore[index]


def test_a_crash_between_finish_and_release_holds_nothing_back(tmp_path: Path) -> None:
    """The run finished and the job was marked done, then the process died before its held
    notifications were released: the next dispatcher round sends them, saying the run is
    final, long before the hold runs out."""
    store = outbox_store(tmp_path)
    source = MemorySource()
    source.put_job(job("ftjob-a", status="succeeded", fine_tuned_model="ft:m"))
    bridge = make_bridge(source, MemorySink(), store)  # no on_final: the release never ran
    bridge.poll()
    assert store.get_job("ftjob-a").synced  # type: ignore[union-attr]
    now = time.time()
    assert due_bodies(store, now) == []
    assert outbox.release_settled(store.engine, now) == 1
    (body,) = due_bodies(store, now)
    assert body["type"] == "fine_tuning.job.succeeded"
    assert body["data"]["run_final"] is True  # type: ignore[index]
    assert outbox.release_settled(store.engine, now) == 0  # once


def test_shutdown_finalizes_terminal_jobs_and_preempts_running_ones(tmp_path: Path) -> None:
    source = MemorySource()
    source.put_job(job("ftjob-done", status="running", created_at=1))
    source.put_job(job("ftjob-live", status="running", created_at=2))
    for job_id in ("ftjob-done", "ftjob-live"):
        source.add_event(job_id, metrics(f"{job_id}-1", 1))
    sink = MemorySink()
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    bridge = make_bridge(source, sink, store)
    bridge.poll()
    # The job ends; the bridge saw it (the snapshot is stored) but is stopped before writing.
    source.jobs["ftjob-done"] = job("ftjob-done", status="succeeded", fine_tuned_model="ft:x")
    bridge.discover()
    bridge.close_runs()
    runs = {r.spec.run_id: r for r in sink.segments.values()}
    assert runs["ftjob-done"].exit_code == 0
    assert runs["ftjob-done"].summary["status"] == "succeeded"
    assert runs["ftjob-done"].preempted is False
    assert runs["ftjob-live"].exit_code == mapping.PREEMPTED_EXIT_CODE
    assert runs["ftjob-live"].preempted is True
    done = store.get_job("ftjob-done")
    assert done is not None and done.synced and done.run_state == "finished"


def test_an_event_read_after_its_step_was_filled_in_is_not_logged_twice(tmp_path: Path) -> None:
    """The result file filled in steps whose events had not been read yet (a shutdown, an
    API storm); when those events arrive later, the steps are not logged a second time."""
    source = MemorySource()
    source.put_job(job("ftjob-a", status="running"))
    for step in (1, 2):
        source.add_event("ftjob-a", metrics(f"ev{step}", step))
    sink = MemorySink()
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    bridge = make_bridge(source, sink, store)
    bridge.poll()
    store.add_events("ftjob-a", [outputs.result_row_event("file-r", MetricRow(3, {"x": 1.0}))])
    bridge.poll()
    source.add_event("ftjob-a", metrics("ev3", 3))
    source.jobs["ftjob-a"] = job("ftjob-a", status="succeeded")
    bridge.poll()
    assert sorted(p.row.step for p in sink.placed_of("ftjob-a")) == [1, 2, 3]


def test_a_job_sent_back_to_the_queue_keeps_its_run_open(tmp_path: Path) -> None:
    """Azure's developer tier preempts jobs: running goes back to queued, then on. The run
    stays one open segment, its steps in order, closed only when the job ends."""
    source = MemorySource()
    source.put_job(job("ftjob-dev", status="running"))
    source.add_event("ftjob-dev", metrics("ev1", 1))
    sink = MemorySink()
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    bridge = make_bridge(source, sink, store)
    bridge.poll()
    source.jobs["ftjob-dev"] = job("ftjob-dev", status="queued")
    bridge.poll()
    assert sink.is_open("ftjob-dev")
    source.jobs["ftjob-dev"] = job("ftjob-dev", status="running")
    source.add_event("ftjob-dev", metrics("ev2", 2))
    bridge.poll()
    source.jobs["ftjob-dev"] = job("ftjob-dev", status="succeeded")
    bridge.poll()
    assert len(sink.segments) == 1
    assert [p.at for p in sink.placed_of("ftjob-dev")] == [1, 2]
    (run,) = sink.segments.values()
    assert run.exit_code == 0
