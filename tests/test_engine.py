"""The engine against in-memory edges and the real SQLite store: incremental polling,
lossless cursors across restarts and crashes."""

from __future__ import annotations

import contextlib
import itertools
import platform
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
import structlog.testing

from bridge import entry, schema
from bridge.daemon import Poller, install_signal_handlers, run_daemon
from bridge.engine import Bridge, CycleStats
from bridge.errors import Interrupted, SinkUnavailable, SourceUnavailable
from bridge.malloc import limit_arenas
from bridge.mapping import WandbDefaults
from bridge.memory import MemorySink, MemorySource
from bridge.ports import Json, StoredEvent
from bridge.store import SqlStore
from tests.factories import job, message, metrics


@pytest.fixture
def source() -> MemorySource:
    return MemorySource(page_size=3)


def make_bridge(source: MemorySource, sink: MemorySink, db: Path) -> Bridge:
    return Bridge(source, sink, SqlStore(f"sqlite:///{db}"), WandbDefaults(project="p"))


def add_steps(source: MemorySource, job_id: str, steps: range) -> None:
    for step in steps:
        source.add_event(job_id, metrics(f"{job_id}-ev{step}", step))


def steps_of(sink: MemorySink, job_id: str) -> list[int]:
    return [row.step for row in sink.rows_of(job_id)]


def test_first_cycle_reads_every_page_and_logs_every_step(
    source: MemorySource, tmp_path: Path
) -> None:
    for i in range(7):
        source.put_job(job(f"ftjob-{i}", status="succeeded", created_at=1000 + i))
        source.add_event(f"ftjob-{i}", message(f"m{i}", "Fine-tuning job started"))
        add_steps(source, f"ftjob-{i}", range(1, 6))
    sink = MemorySink()
    stats = make_bridge(source, sink, tmp_path / "s.db").poll()
    assert stats.jobs_seen == 7
    assert source.calls["list_jobs"] == 3  # 7 jobs in pages of 3
    for i in range(7):
        assert steps_of(sink, f"ftjob-{i}") == [1, 2, 3, 4, 5]
    assert all(run.exit_code == 0 for run in sink.segments.values())
    assert stats.runs_finished == 7


def test_later_cycles_cost_one_list_and_one_event_page_per_active_job(
    source: MemorySource, tmp_path: Path
) -> None:
    for i in range(9):
        source.put_job(job(f"old-{i}", status="succeeded", created_at=100 + i))
    for i in range(2):
        source.put_job(job(f"live-{i}", status="running", created_at=500 + i))
        add_steps(source, f"live-{i}", range(1, 3))
    bridge = make_bridge(source, MemorySink(), tmp_path / "s.db")
    bridge.poll()
    source.calls.clear()
    bridge.poll()
    assert source.calls == {"list_jobs": 1, "list_events": 2}


def test_new_events_only_are_fetched_and_logged_in_order(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 8))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()
    add_steps(source, "ftjob-a", range(8, 12))
    source.calls.clear()
    stats = bridge.poll()
    assert stats.events == 4
    assert source.calls["list_events"] == 2  # 4 new events: one full page, then the known one
    assert steps_of(sink, "ftjob-a") == list(range(1, 12))


def test_a_job_read_before_asks_for_a_short_first_page_and_overflows_losing_nothing(
    tmp_path: Path,
) -> None:
    source = MemorySource(page_size=100)
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 51))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()  # never read: a whole page
    add_steps(source, "ftjob-a", range(51, 53))
    bridge.poll()  # 50 new last time: room for 100
    add_steps(source, "ftjob-a", range(53, 54))
    bridge.poll()  # 2 new last time: the least, 10
    add_steps(source, "ftjob-a", range(54, 79))
    source.calls.clear()
    stats = bridge.poll()  # 1 new last time, 25 now: the short page overflows
    assert source.first_pages == [None, 100, 10, 10]
    assert source.calls["list_events"] == 2
    assert stats.events == 25
    assert steps_of(sink, "ftjob-a") == list(range(1, 79))


def test_job_end_finishes_the_run_with_summary_and_exit_code(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 4))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()
    add_steps(source, "ftjob-a", range(4, 6))
    failed = job(
        "ftjob-a", status="failed", error={"code": "oops", "message": "it broke", "param": None}
    )
    source.put_job(failed)
    bridge.poll()
    (run,) = sink.segments.values()
    assert run.exit_code == 1
    assert run.summary["status"] == "failed"
    assert run.summary["error_message"] == "it broke"
    assert steps_of(sink, "ftjob-a") == [1, 2, 3, 4, 5]
    source.calls.clear()
    bridge.poll()
    assert source.calls == {"list_jobs": 1}  # synced terminal jobs cost nothing


def test_config_follows_the_job_as_auto_becomes_numbers(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a", status="queued"))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()
    source.put_job(job("ftjob-a", hyperparameters={"n_epochs": 3, "batch_size": 8}))
    bridge.poll()
    (run,) = sink.segments.values()
    assert run.config["hyperparameters"] == {"n_epochs": 3, "batch_size": 8}


def test_restart_logs_nothing_twice_and_skips_nothing(source: MemorySource, tmp_path: Path) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 5))
    sink = MemorySink()
    first = make_bridge(source, sink, tmp_path / "s.db")
    first.poll()
    first.close_runs()  # graceful shutdown
    first.store.close()
    add_steps(source, "ftjob-a", range(5, 9))
    second = make_bridge(source, sink, tmp_path / "s.db")
    assert second.recover() == 0
    second.poll()
    assert steps_of(sink, "ftjob-a") == list(range(1, 9))
    assert len(sink.segments) == 2


def test_crash_resends_exactly_what_did_not_reach_disk(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 11))
    sink = MemorySink()
    first = make_bridge(source, sink, tmp_path / "s.db")
    first.poll()
    sink.crash(keep=6)  # kill -9: the last 4 rows never reached the file
    first.store.close()
    second = make_bridge(source, sink, tmp_path / "s.db")
    assert second.recover() == 4
    second.poll()
    assert steps_of(sink, "ftjob-a") == list(range(1, 11))


def test_a_failed_finish_is_repaired_on_the_next_cycle(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 9))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()
    source.put_job(job("ftjob-a", status="succeeded"))
    sink.fail_finish_keeping = 5
    with pytest.raises(SinkUnavailable, match="not confirmed"):
        bridge.poll()  # W&B took nothing this cycle: it fails, and the daemon backs off
    sink.fail_finish_keeping = None
    bridge.poll()
    assert steps_of(sink, "ftjob-a") == list(range(1, 9))
    state = bridge.store.get_job("ftjob-a")
    assert state is not None and state.synced
    assert [run.exit_code for run in sink.segments.values()] == [None, 0]


def test_wandb_unavailable_keeps_events_until_it_is_back(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-a"))
    add_steps(source, "ftjob-a", range(1, 4))
    sink = MemorySink()
    sink.fail_open = True
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    with pytest.raises(SinkUnavailable, match="did not open"):
        bridge.poll()
    sink.fail_open = False
    bridge.poll()
    assert steps_of(sink, "ftjob-a") == [1, 2, 3]


def test_native_jobs_are_tracked_but_not_written(source: MemorySource, tmp_path: Path) -> None:
    native = [{"type": "wandb", "wandb": {"project": "theirs"}}]
    source.put_job(job("ftjob-n", status="succeeded", integrations=native))
    add_steps(source, "ftjob-n", range(1, 3))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    bridge.poll()
    assert sink.segments == {}
    state = bridge.store.get_job("ftjob-n")
    assert state is not None and state.synced and state.run_state == "skipped"


def test_a_job_off_the_listed_pages_is_fetched_only_when_it_may_have_changed(
    source: MemorySource, tmp_path: Path
) -> None:
    source.put_job(job("ftjob-old", status="running", created_at=1))
    add_steps(source, "ftjob-old", range(1, 3))
    bridge = make_bridge(source, MemorySink(), tmp_path / "s.db")
    bridge.poll()
    for i in range(5):  # newer jobs push it off the first page
        source.put_job(job(f"new-{i}", status="succeeded", created_at=100 + i))
    bridge.poll()
    add_steps(source, "ftjob-old", range(3, 5))
    source.calls.clear()
    bridge.poll()
    assert source.calls == {"list_jobs": 1, "list_events": 1}, "metrics alone: no job fetch"

    source.put_job(job("ftjob-old", status="succeeded", created_at=1))
    source.add_event("ftjob-old", message("done", "The job has successfully completed"))
    source.calls.clear()
    bridge.poll()
    assert source.calls["get_job"] == 1, "a message event may come with a status change"
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "succeeded" and state.synced


def old_job_off_the_first_page(
    source: MemorySource, tmp_path: Path, *, apart: bool = False
) -> Bridge:
    """A bridge that synced ftjob-old (running), then five newer jobs in front of it: the
    listing's first page (3 jobs) no longer shows it. ``apart``: the daemon's sweep."""
    source.put_job(job("ftjob-old", status="running", created_at=1))
    bridge = make_bridge(source, MemorySink(), tmp_path / "s.db")
    bridge.sweep_apart = apart
    bridge.poll()
    for i in range(5):
        source.put_job(job(f"new-{i}", status="succeeded", created_at=100 + i))
    bridge.poll()
    return bridge


def test_a_stale_snapshot_is_fetched_even_without_events(
    source: MemorySource, tmp_path: Path
) -> None:
    bridge = old_job_off_the_first_page(source, tmp_path)
    source.put_job(job("ftjob-old", status="cancelled", created_at=1))
    bridge.refresh_after = 0.0
    bridge.poll()
    # Looked at after the cycle's reads: the change is recorded (and notified) in this
    # cycle, the run finished in the next.
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "cancelled" and not state.synced
    bridge.poll()
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "cancelled" and state.synced


class HeldRefresh(MemorySource):
    """A source whose single-job reads wait, while ``hold`` is set, until ``release``."""

    def __init__(self) -> None:
        super().__init__(page_size=3)
        self.hold = False
        self.waiting = threading.Event()
        self.release = threading.Event()

    def get_job(self, job_id: str) -> Json:
        if self.hold:
            self.waiting.set()
            assert self.release.wait(10), "never released"
        return super().get_job(job_id)


def test_the_daemons_look_at_stale_jobs_does_not_hold_up_the_next_cycles(
    tmp_path: Path,
) -> None:
    source = HeldRefresh()
    bridge = old_job_off_the_first_page(source, tmp_path, apart=True)
    source.put_job(job("ftjob-old", status="cancelled", created_at=1))
    bridge.refresh_after = 0.0
    source.hold = True
    bridge.poll()  # starts the look at ftjob-old (off the first page), which waits
    assert source.waiting.wait(10)
    source.put_job(job("new-9", status="succeeded", created_at=200))
    bridge.poll()  # a cycle while it waits: not held up, and no second look started
    later = bridge.store.get_job("new-9")
    assert later is not None and later.synced
    assert source.calls["get_job"] == 0, "the held read has not returned; no other started"
    source.release.set()
    bridge.settle(10)
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "cancelled" and not state.synced
    source.hold = False
    bridge.poll()
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "cancelled" and state.synced


def test_a_look_at_stale_jobs_that_fails_apart_is_said_and_tried_again(
    source: MemorySource, tmp_path: Path
) -> None:
    bridge = old_job_off_the_first_page(source, tmp_path, apart=True)
    bridge.refresh_after = 0.0
    real = source.get_job

    def away(job_id: str) -> Json:
        raise SourceUnavailable("the API is away")

    source.get_job = away  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        bridge.poll()
        bridge.settle(10)
    assert [e["error"] for e in logs if e["event"] == "sweep.failed"] == ["the API is away"]
    source.get_job = real  # type: ignore[method-assign]
    source.put_job(job("ftjob-old", status="failed", created_at=1))
    bridge.poll()
    bridge.settle(10)
    state = bridge.store.get_job("ftjob-old")
    assert state is not None and state.status == "failed"


def test_the_reading_threads_check_stored_events_while_the_writer_holds_its_turn(
    tmp_path: Path,
) -> None:
    """SQLite takes one writer at a time, so writes take turns; the known-events check the
    API-reading threads make does not wait for the writer's turn (WAL readers run beside
    it), and what the writer stores shows in it once committed."""
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    store.record_job("openai", job("ftjob-a"))
    store.add_events("ftjob-a", [metrics("e1", 1), metrics("e2", 2)])
    seen: list[set[str]] = []
    with store._tx() as conn:  # the writer's turn, a write under way
        conn.execute(
            sa.update(schema.jobs).where(schema.jobs.c.job_id == "ftjob-a").values(synced=False)
        )
        reader = threading.Thread(
            target=lambda: seen.append(store.known_event_ids("ftjob-a", ["e3", "e2", "e1"]))
        )
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the known-events check waited for the writer"
    assert seen == [{"e1", "e2"}]
    assert store.add_events("ftjob-a", [metrics("e2", 2), metrics("e3", 3)]) == 1
    assert store.known_event_ids("ftjob-a", ["e3", "e4"]) == {"e3"}


def test_a_batch_of_jobs_is_stored_and_placed_as_each_job_alone_would_be(
    tmp_path: Path,
) -> None:
    """The writer's batch statements give every job what its own calls would: events once
    each (in order, known ones and repeats left out), its own sequence numbers, and its own
    W&B steps after its highest one."""
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c"):
        store.record_job("openai", job(job_id))
    store.add_events("ftjob-a", [metrics("a1", 1), metrics("a2", 2)])
    store.send_pending(
        "ftjob-a", lambda pending, last: {e.event_id: last + 1 + i for i, e in enumerate(pending)}
    )
    stored = store.add_events_many(
        [
            ("ftjob-a", [metrics("a2", 2), metrics("a3", 3)]),
            ("ftjob-b", [metrics("b1", 1), metrics("b1", 1), metrics("b2", 2)]),
            ("ftjob-c", []),
            ("ftjob-a", [metrics("a4", 4)]),
        ]
    )
    assert stored == 4
    assert [(e.event_id, e.seq) for e in store.events("ftjob-a")] == [
        ("a1", 0),
        ("a2", 1),
        ("a3", 2),
        ("a4", 3),
    ]
    assert [(e.event_id, e.seq) for e in store.events("ftjob-b")] == [("b1", 0), ("b2", 1)]
    lasts: dict[str, int] = {}

    def place(job_id: str, pending: list[StoredEvent], last: int) -> dict[str, int]:
        lasts[job_id] = last
        return {e.event_id: last + 1 + i for i, e in enumerate(pending)}

    sent = store.send_pending_many(["ftjob-a", "ftjob-b", "ftjob-c"], place)
    assert {job_id: [e.event_id for e in events] for job_id, events in sent.items()} == {
        "ftjob-a": ["a3", "a4"],
        "ftjob-b": ["b1", "b2"],
        "ftjob-c": [],
    }
    assert lasts == {"ftjob-a": 1, "ftjob-b": -1}
    assert store.last_wandb_step("ftjob-a") == 3 and store.last_wandb_step("ftjob-b") == 1
    assert store.pending_events("ftjob-a") == store.pending_events("ftjob-b") == []


def test_the_malloc_arena_cap_is_set_on_glibc_and_left_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert limit_arenas(0) is False
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas(2) is False  # the operator's own setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.libc_ver()[0] == "glibc":
        assert limit_arenas(2) is True


def test_a_cycle_longer_than_the_interval_is_followed_at_once_by_the_next(
    source: MemorySource, tmp_path: Path
) -> None:
    """The timer skips the slots a long cycle missed; the daemon starts the next cycle as
    soon as a late one ends, not a slot later."""
    source.put_job(job("ftjob-a"))
    bridge = make_bridge(source, MemorySink(), tmp_path / "s.db")
    poll = bridge.poll
    cycles: list[tuple[float, float]] = []

    def slow_poll() -> CycleStats:
        started = time.monotonic()
        stats = poll()
        time.sleep(1.2)  # the interval is 1 s
        cycles.append((started, time.monotonic()))
        return stats

    setattr(bridge, "poll", slow_poll)  # noqa: B010 - an instance attribute on purpose
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = run_daemon(
            bridge,
            interval=1.0,
            backoff_max=5.0,
            shutdown_timeout=5.0,
            until=lambda: len(cycles) >= 3,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0
    waits = [begin - end for (_, end), (begin, _) in itertools.pairwise(cycles)]
    assert len(waits) == 2
    assert all(wait < 0.4 for wait in waits), waits  # a skipped slot would wait 0.8 s


def test_a_ctrl_c_swallowed_during_start_up_still_stops_the_daemon() -> None:
    """Ctrl-C during start-up raises KeyboardInterrupt; where start-up code swallows it (an
    import, a finalizer), the daemon's handlers, once installed, stop it all the same."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            entry._interrupt(signal.SIGINT, None)  # what entry.main installs first
        install_signal_handlers(stop)
        assert stop.is_set()
        again = threading.Event()
        install_signal_handlers(again)
        assert not again.is_set(), "said once"
    finally:
        entry.interrupted_early()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_writer_process_sizes_its_first_reads_on_the_parents_timings(
    source: MemorySource, tmp_path: Path
) -> None:
    """A backfill's writer lists nothing itself: without the parent's request time it would
    read its share with the fewest threads, one slow request after another."""
    for i in range(100):
        source.put_job(job(f"ftjob-{i}", status="succeeded", created_at=1000 + i))
    parent = make_bridge(source, MemorySink(), tmp_path / "s.db")
    assert parent.timings() == {}, "nothing timed yet"
    parent.discover(full=True)
    assert set(parent.timings()) == {source.name}
    writer = make_bridge(source, MemorySink(), tmp_path / "s.db")
    jobs = writer.store.unsynced_jobs()
    assert writer.reading_threads(jobs) == 4
    writer.assume_timings({source.name: 0.15, "another-source": 9.0})
    # 100 finished jobs x 5 requests x 150 ms, to be read within a second: the most threads.
    assert writer.reading_threads(jobs) == 64
    writer.assume_timings({source.name: 0.001})
    assert writer.reading_threads(jobs) == 64, "its own timings are not overwritten"


def test_a_cycle_cut_short_by_a_stop_is_not_a_failure(source: MemorySource, tmp_path: Path) -> None:
    """A stop asked for while a page is read ends the cycle with ``Interrupted``: the poller says
    so at info, counts no failure and sets no backoff (on-call people watch ``cycle.failed``)."""
    source.put_job(job("ftjob-a"))
    bridge = make_bridge(source, MemorySink(), tmp_path / "s.db")

    def stopped_poll() -> CycleStats:
        raise Interrupted("list jobs: stopped")

    setattr(bridge, "poll", stopped_poll)  # noqa: B010 - an instance attribute on purpose
    poller = Poller(bridge, interval=1.0, backoff_max=5.0)
    with structlog.testing.capture_logs() as logs:
        assert poller.tick() is None
    assert poller.failures == 0
    assert poller.not_before == 0.0
    assert [line["event"] for line in logs] == ["cycle.interrupted"]
    assert logs[0]["log_level"] == "info"


class _OutputsBeside(MemorySource):
    """Events that wait (up to 5 s) for the job's checkpoints to be asked for, and say whether
    they were; checkpoints that fail when ``away``."""

    def __init__(self) -> None:
        super().__init__(page_size=3)
        self.listed = threading.Event()
        self.beside: list[bool] = []
        self.away = False

    def checkpoints(self, job_id: str) -> list[Json]:
        self.listed.set()
        if self.away:
            raise SourceUnavailable("checkpoints: the API is away")
        return super().checkpoints(job_id)

    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        self.beside.append(self.listed.wait(5))
        return super().event_pages(job_id, first_page)


def test_a_finished_jobs_outputs_are_read_beside_its_events(tmp_path: Path) -> None:
    source = _OutputsBeside()
    source.put_job(job("ftjob-done", status="succeeded"))
    add_steps(source, "ftjob-done", range(1, 4))
    sink = MemorySink()
    stats = make_bridge(source, sink, tmp_path / "s.db").poll()
    assert source.beside == [True]
    assert steps_of(sink, "ftjob-done") == [1, 2, 3]
    assert stats.runs_finished == 1


def test_an_outputs_read_that_fails_beside_the_events_drops_none_of_them(tmp_path: Path) -> None:
    """The read ahead of a finished job's outputs fails: its events are stored and logged all
    the same (a source with a cursor of its own, Together's, would not give them again); the
    writer reads the checkpoints again, and the run ends once they answer."""
    source = _OutputsBeside()
    source.away = True
    source.put_job(job("ftjob-done", status="succeeded"))
    add_steps(source, "ftjob-done", range(1, 4))
    sink = MemorySink()
    bridge = make_bridge(source, sink, tmp_path / "s.db")
    stats = bridge.poll()
    assert any("the API is away" in error for error in stats.errors)  # the writer's read
    assert stats.runs_finished == 0
    assert steps_of(sink, "ftjob-done") == [1, 2, 3], "the events were stored and logged"
    source.away = False
    assert bridge.poll().runs_finished == 1
    assert steps_of(sink, "ftjob-done") == [1, 2, 3]
