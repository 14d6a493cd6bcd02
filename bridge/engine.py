"""The bridge's work: discover jobs, fetch their new events, hand rows to the sink, and keep
the store's cursor where the sink really is.

The cursor rules that make it lossless, as the W&B server sees it:
- an event is stored (``new``) before anything is done with it;
- its row is given a W&B step, and marked ``sent`` at that step, before it is logged; a row
  sent again after a crash goes to the same step, so a replay overwrites, never duplicates;
- it becomes ``durable`` only on evidence that W&B keeps it. Offline: the segment was finished
  and its file ends with the exit record, or, after a crash, the file (cut back to its last
  whole record, which ``wandb sync`` can read) holds its step. Online: the segment finished
  cleanly (wandb uploads everything before ``finish`` returns), or the run was reopened and
  the server's history already reaches past its step (``run.starting_step``); the local file
  never decides, since it holds rows the server may not have;
- everything else is sent again, in step order, into the next segment of the same run;
- a terminal status's notifications wait until the run shows the final state (see
  ``on_final``), or until their bounded wait runs out.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from bridge import datasets, mapping, prices, routing
from bridge.budget import Beside, JobBudget, ReadsInFlight
from bridge.errors import JobNotFound, RetryableError, SinkUnavailable
from bridge.evals.sampler import Sampler
from bridge.leases import Leases
from bridge.links import Links
from bridge.mapping import WandbDefaults
from bridge.outputs import Outputs, epoch_ended, epoch_ends_in
from bridge.ports import (
    JobSource,
    JobState,
    Json,
    PlacedRow,
    RunSink,
    StateStore,
    StoredEvent,
)
from bridge.routing import JobFilter, Route
from bridge.webhooks import Dispatcher

log = structlog.get_logger(__name__)

#: Threads reading the API when their number follows its latency (``fetch_workers = 0``).
MIN_FETCH_WORKERS, MAX_FETCH_WORKERS = 4, 64
#: Seconds within which a cycle's API reads should be done, when sized to latency.
READ_SPAN = 1.0
#: API requests a job's reads take, before any was timed: a finished job's event pages,
#: checkpoints and result file; a running job's first events page.
REQUESTS_FINISHED, REQUESTS_ACTIVE = 5, 1
#: Jobs on a page of the listing (the APIs' usual maximum).
LIST_PAGE = 100
#: Jobs whose reads are done written together (one store transaction per step for all).
WRITE_BATCH = 100
#: The first events page of a job read before holds at least this many events, and twice
#: as many as its last read found new (the rest of the page is what was read before).
FIRST_PAGE_MIN = 10


@dataclass
class CycleStats:
    jobs_seen: int = 0
    active: int = 0
    events: int = 0
    rows_logged: int = 0
    runs_finished: int = 0
    lag_seconds: float | None = None
    errors: list[str] = field(default_factory=list)
    # The errors themselves, for the metrics (API errors by kind, W&B errors).
    failures: list[RetryableError] = field(default_factory=list)

    def saw_lag(self, created_at: object, now: float) -> None:
        if isinstance(created_at, int | float) and not isinstance(created_at, bool):
            lag = max(0.0, now - float(created_at))
            self.lag_seconds = max(self.lag_seconds or 0.0, lag)


class Bridge:
    """One source, one sink, one store; ``poll`` is one cycle."""

    def __init__(
        self,
        source: JobSource,
        sink: RunSink,
        store: StateStore,
        defaults: WandbDefaults,
        native_mode: mapping.NativeMode = "skip",
        *,
        job_filter: JobFilter | None = None,
        routes: Sequence[Route] = (),
    ) -> None:
        self.source = source
        self.sink = sink
        self.store = store
        self.defaults = defaults
        self.native_mode = native_mode
        self.job_filter = job_filter or JobFilter()
        self.routes = tuple(routes)
        self._now = time.time
        self.stopping = threading.Event()
        # Set when several replicas may share the store: who works on which job.
        self.leases: Leases | None = None
        # Delivers what status changes wrote to the outbox; None when there are no targets.
        self.dispatcher: Dispatcher | None = None
        self.outputs = Outputs(source, sink, store)
        self.links = Links(source.name, sink, store)
        # Base vs fine-tuned samples of a succeeded job (``bridge.evals``); None = off.
        self.sampler: Sampler | None = None
        # When each job's snapshot was last read from the API (monotonic), and which jobs
        # got events that may come with a status change.
        self._fetched_at: dict[str, float] = {}
        self._hinted: set[str] = set()
        # How many new events each job's last read found (the size of its next first page).
        self._last_new: dict[str, int] = {}
        self._cycle_started = float("-inf")
        self.refresh_after = 60.0
        # The daemon's: the look at stale jobs runs beside the next cycles (see poll).
        self.sweep_apart = False
        self._sweeper: threading.Thread | None = None
        self._retrying: set[str] = set()
        self._quarantine_kept: set[str] = set()
        # Threads reading the API; 0: as many as the API's latency calls for.
        self.fetch_workers = 0
        # Seconds one API request took (listing pages) and one job's reads took (a moving
        # average), which size the reading threads.
        self._request_seconds: float | None = None
        self._job_read_seconds: float | None = None
        self._timing_lock = threading.Lock()
        # Seconds a cycle waits for one job's API reads (None: as long as they take).
        self.job_budget: float | None = None
        self._reads = ReadsInFlight()
        # Rows of the training/validation files sampled into a dataset artifact; 0 = off.
        self.dataset_rows = 0
        self.prices: Mapping[str, float] = prices.DEFAULT_PRICES
        # Called with a job id once its run shows the job's final state (or the job has no
        # run to wait for): releases the terminal notifications held for it.
        self.on_final: Callable[[str], object] | None = None

    # Start-up
    def recover(self) -> int:
        """Repair every run left open by a crash (see :meth:`repair`). With leases (several
        replicas may share the store), a run is repaired only by the replica that takes its
        job's lease, when it takes it (``_ensure_open``): another may still be writing it."""
        if self.leases is not None:
            return 0
        return sum(
            self.repair(state)
            for state in self.store.jobs_with_open_runs()
            if not self.sink.is_open(state.job_id)
        )

    def repair(self, state: JobState) -> int:
        """A run the store thinks open but the sink does not hold (a crash, or a finish that
        failed). Offline, what its segment's file holds stays, the rest is sent again into a
        new segment. Online nothing is decided here: the server says where its copy ends
        when the run is reopened (see ``_ensure_open``). Returns how many rows go back."""
        if not state.run_segment:
            return self.store.recover_segment(state.job_id, set())
        steps = self.sink.durable_steps(state.run_segment)
        if steps is None:
            return 0
        resent = self.store.recover_segment(state.job_id, steps)
        log.info(
            "run.recovered", job_id=state.job_id, steps_on_disk=len(steps), rows_to_resend=resent
        )
        return resent

    # One cycle
    def poll(self) -> CycleStats:
        stats = CycleStats()
        # With several replicas, one of them lists jobs for the whole group each cycle; the
        # others work from the snapshots it stores.
        lister = self.leases is None or self.leases.acquire(f"list:{self.source.name}")
        seen = self._list_new() if lister else None
        self._wake_dispatcher()
        self.sync_unsynced(stats)
        if seen is not None:
            # Jobs off the first pages are looked at after the cycle's reads and writes (now
            # and then that is every page of the listing): the rows of this cycle do not
            # wait for it; a status change it finds is synced in the next cycle.
            if self.sweep_apart:
                stats.jobs_seen = len(seen)
                self._sweep_apart(seen)
            else:
                stats.jobs_seen = len(self._look_at_stale(seen))
                self._wake_dispatcher()
        self.links.sweep(self._spec)
        self.unblock_sink()
        return stats

    def unblock_sink(self) -> None:
        """Run ids that a failed W&B init left blocked (while other runs were open) open
        again only after wandb-core restarts: once W&B answers, close the open runs (they
        resume at the next cycle) and restart it."""
        blocked = self.sink.blocked()
        if not blocked or not self.sink.reachable():
            return
        log.info(
            "wandb.restarting", blocked_runs=sorted(blocked), open_runs=len(self.sink.open_runs())
        )
        self.close_runs(every=True)
        if not self.sink.open_runs():
            self.sink.reset()

    def _wake_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()  # status changes are in the outbox: deliver them now

    def discover(self, *, full: bool = False) -> int:
        """List jobs newest first, stopping after the page where known jobs begin (unless
        ``full``); jobs still unsynced that the pages did not show are fetched one by one."""
        return len(self._look_at_stale(self._list_new(full), full=full))

    def _list_new(self, full: bool = False) -> set[str]:
        """The listing's pages newest first, up to the one where known jobs begin (all of
        them when ``full``); the ids seen."""
        self._cycle_started = time.monotonic()
        seen = {str(job["id"]) for job in self._listed_jobs(full)}
        self._keep_quarantined()
        return seen

    def _look_at_stale(self, seen: set[str], *, full: bool = False) -> set[str]:
        """Unsynced jobs ``seen`` left out and not looked at for a while: listed again
        (every page) when that costs fewer requests than getting each of them."""
        stale = sorted(
            job_id
            for job_id in self.store.unsynced_ids(self.source.name) - seen
            if self._stale(job_id)
        )
        if not full and len(stale) > 1 and len(stale) > 1 + self.store.job_count() // LIST_PAGE:
            # Listing every page costs fewer requests than getting each of them.
            seen.update(str(job["id"]) for job in self._listed_jobs(full=True))
        for job_id in stale:
            if job_id not in seen and not self.stopping.is_set():
                self.refresh(job_id)
                seen.add(job_id)
        return seen

    def _sweep_apart(self, seen: set[str]) -> None:
        """:meth:`_look_at_stale` in a thread of its own, so that the next cycles do not wait
        for it (listing every page takes a request per 100 jobs, one after another); one at a
        time: while one runs, later cycles start none."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._sweeper = threading.Thread(
            target=self._sweep, args=(seen,), name="ftbridge-sweep", daemon=True
        )
        self._sweeper.start()

    def _sweep(self, seen: set[str]) -> None:
        try:
            self._look_at_stale(seen)
        except RetryableError as error:
            log.warning("sweep.failed", source=self.source.name, error=str(error))
        except Exception as error:  # noqa: BLE001 - a thread's end: said, and tried next cycle
            log.error("sweep.crashed", source=self.source.name, error=repr(error))
        else:
            self._wake_dispatcher()

    def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for a look at stale jobs still running apart."""
        if self._sweeper is not None:
            self._sweeper.join(timeout)

    def _keep_quarantined(self) -> None:
        """Jobs the source refused go to the store once, for ``ftbridge status``."""
        refused: dict[str, str] = getattr(self.source, "quarantined", {})
        for job_id, reason in refused.items():
            if job_id not in self._quarantine_kept:
                self.store.quarantine(self.source.name, job_id, reason)
                self._quarantine_kept.add(job_id)

    def _stale(self, job_id: str) -> bool:
        """A job off the listed pages is fetched by itself only now and then: a status change
        comes with an event, which triggers a fetch at once (see ``_fetch``)."""
        fetched = self._fetched_at.get(job_id)
        return fetched is None or time.monotonic() - fetched > self.refresh_after

    def _listed_jobs(self, full: bool) -> Iterator[Json]:
        reached_known = False
        pages = iter(self.source.job_pages())
        while True:
            started = time.monotonic()
            page = next(pages, None)
            if page is None:
                return
            self._request_seconds = time.monotonic() - started
            for job in page:
                if self.job_filter.too_old(job):
                    return  # newest first: every job after this one is older still
                if not self.job_filter.accepts(job):
                    continue
                reached_known = reached_known or self.store.has_job(str(job["id"]))
                self.observe(job)
                yield job
            if reached_known and not full:
                return

    def observe(self, job: Json) -> None:
        self._fetched_at[str(job["id"])] = time.monotonic()
        self.links.saw(job)
        spec = self._spec(job)
        url = mapping.run_url(spec, self.defaults.app_url)
        change = self.store.record_job(self.source.name, job, run_url=url)
        if change is not None:
            log.info(
                "job.status",
                job_id=change.job_id,
                previous=change.previous,
                status=change.current,
            )

    def refresh(self, job_id: str) -> None:
        try:
            self.observe(self.source.get_job(job_id))
        except JobNotFound:
            log.warning("job.gone", job_id=job_id, detail="the API no longer shows this job")
            self.store.mark_synced(job_id)

    def sync_one(self, job_id: str, stats: CycleStats) -> None:
        """Fetch one job by id and sync it (``ftbridge sync JOB_ID``)."""
        self.observe(self.source.get_job(job_id))
        state = self.store.get_job(job_id)
        if state is not None:
            stats.jobs_seen += 1
            self.sync_job(state, stats)

    def _spec(self, job: Json) -> mapping.RunSpec:
        defaults = routing.destination(job, self.defaults, self.routes)
        spec = self.links.annotate(mapping.run_spec(job, defaults, self.source.name), job)
        if self.dataset_rows:
            spec = datasets.annotate(spec, job)
        return spec

    def sync_unsynced(
        self,
        stats: CycleStats,
        on_job: Callable[[JobState], object] | None = None,
        *,
        only: Collection[str] | None = None,
    ) -> None:
        """Sync every job this replica works on (of ``only``, when given: a writer's share of
        a backfill). Their API reads run in a few threads; each job goes to W&B (on this
        thread) as soon as its reads are done, so that reading the next jobs overlaps writing
        this one."""
        unsynced = self.store.unsynced_jobs(self.source.name)
        if only is not None:
            unsynced = [state for state in unsynced if state.job_id in only]
        claimed = self._claim(unsynced)
        if not claimed:
            return
        self.sink.new_pass()
        threads = self.reading_threads(claimed)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="ftbridge-fetch")
        refused: list[SinkUnavailable] = []
        budget: JobBudget[tuple[list[Json], JobState]] = JobBudget(
            self.job_budget, self.stopping, self._reads
        )
        try:
            futures = {
                budget.submit(
                    pool, state.job_id, functools.partial(self._timed_fetch, state)
                ): state
                for state in claimed
                if not budget.busy(state.job_id)  # still read by an earlier cycle
            }
            for batch in budget.completed(WRITE_BATCH):
                if self.stopping.is_set():
                    return
                read: list[tuple[JobState, list[Json]]] = []
                for future in batch:
                    state = futures[future]
                    if on_job is not None:
                        on_job(state)
                    stats.active += 0 if mapping.is_terminal(state.status) else 1
                    try:
                        fresh, state = future.result()
                    except (JobNotFound, RetryableError) as error:
                        self._failed(state.job_id, error, stats, refused)
                    else:
                        read.append((state, fresh))
                self._write_many(read, stats, refused)
        finally:
            # Reads left behind (a slow job, a stop) finish in the background.
            late = bool(budget.abandoned) or self.stopping.is_set()
            pool.shutdown(wait=not late, cancel_futures=True)
        if refused and len(refused) == len(claimed):
            # W&B took nothing: fail the cycle, so that the daemon backs off instead of
            # trying every job again (each up to the init timeout) on every cycle.
            raise refused[0]

    def timings(self) -> dict[str, float]:
        """Seconds one API request took, by source (none before a listing was timed): for
        the writer processes of a backfill, which list nothing themselves."""
        return {} if self._request_seconds is None else {self.source.name: self._request_seconds}

    def assume_timings(self, timings: Mapping[str, float]) -> None:
        """Size the first reads on another process's :meth:`timings` (its own come after)."""
        seconds = timings.get(self.source.name)
        if self._request_seconds is None and seconds is not None:
            self._request_seconds = seconds

    def reading_threads(self, jobs: Sequence[JobState]) -> int:
        """Threads for this cycle's API reads: ``fetch_workers`` when set; else enough for
        the reads to be done within ``READ_SPAN`` (Little's law on what the last reads
        took), bounded by MIN/MAX_FETCH_WORKERS and the number of jobs."""
        if self.fetch_workers:
            return self.fetch_workers
        per_job = self._job_read_seconds
        if per_job is not None:
            seconds = per_job * len(jobs)
        else:
            request = self._request_seconds or 0.0
            seconds = request * sum(
                REQUESTS_FINISHED if mapping.is_terminal(s.status) else REQUESTS_ACTIVE
                for s in jobs
            )
        wanted = math.ceil(seconds / READ_SPAN)
        return max(1, min(len(jobs), MAX_FETCH_WORKERS, max(MIN_FETCH_WORKERS, wanted)))

    def _timed_fetch(self, state: JobState) -> tuple[list[Json], JobState]:
        started = time.monotonic()
        result = self._fetch(state)
        took = time.monotonic() - started
        with self._timing_lock:
            last = self._job_read_seconds
            self._job_read_seconds = took if last is None else 0.8 * last + 0.2 * took
        return result

    def _failed(
        self,
        job_id: str,
        error: JobNotFound | RetryableError,
        stats: CycleStats,
        refused: list[SinkUnavailable],
    ) -> None:
        """A job's sync failed this cycle: gone for good, or to be tried again later."""
        if isinstance(error, JobNotFound):
            log.warning("job.gone", job_id=job_id, detail="its events are gone")
            self._done_with(job_id)
            return
        stats.errors.append(str(error))
        stats.failures.append(error)
        self._retry_later(job_id, error)
        if isinstance(error, SinkUnavailable):
            refused.append(error)

    def _retry_later(self, job_id: str, error: RetryableError) -> None:
        """Said once while a job keeps failing, then only as debug."""
        emit = log.debug if job_id in self._retrying else log.warning
        self._retrying.add(job_id)
        emit("job.retry_later", job_id=job_id, error=str(error))

    def _claim(self, unsynced: list[JobState]) -> list[JobState]:
        """The jobs this replica works on now: those whose lease it holds or can take, up to
        its fair share (jobs / live replicas). Leases beyond the share are handed back, so
        that a replica joining the group gets its part."""
        if self.leases is None:
            return unsynced
        share = self.leases.fair_share(len(unsynced))
        held = self.leases.held("job:")
        ordered = sorted(unsynced, key=lambda s: f"job:{s.job_id}" not in held)
        mine: list[JobState] = []
        tried = 0
        while len(mine) < share and tried < len(ordered):
            # The leases still wanted, taken in one transaction; more if some were refused.
            batch = ordered[tried : tried + share - len(mine)]
            tried += len(batch)
            taken = self.leases.acquire_many([f"job:{state.job_id}" for state in batch])
            for state in batch:
                resource = f"job:{state.job_id}"
                if resource in taken:
                    mine.append(state)
                elif resource in held:
                    self._lost(state.job_id)
        for state in ordered[tried:]:
            if f"job:{state.job_id}" in held:
                self.hand_back(state.job_id)
        for run_id in self.sink.open_runs():
            if not self.leases.holds(f"job:{run_id}"):
                self._lost(run_id)
        return mine

    def _lost(self, job_id: str) -> None:
        """Another replica took this job's lease (ours expired: a pause longer than the
        lease time). Close the run here and leave the job's state to the new owner, which
        repaired the run from what reached disk; rows this replica flushed after that may
        stand in two segments (W&B keeps one row per step)."""
        log.warning("job.lease_lost", job_id=job_id, replica=self._replica)
        if self.sink.is_open(job_id):
            try:
                self.sink.finish(job_id, mapping.PREEMPTED_EXIT_CODE, preempted=True)
            except SinkUnavailable as error:
                log.warning("run.finish_failed", job_id=job_id, error=str(error))

    def hand_back(self, job_id: str) -> None:
        """Close the job's run segment here and give up its lease, for another replica."""
        if self.sink.is_open(job_id):
            self.sink.finish(job_id, mapping.PREEMPTED_EXIT_CODE, preempted=True)
            self.store.close_run(job_id, "closed")
        if self.leases is not None:
            self.leases.release([f"job:{job_id}"])
        log.info("job.handed_back", job_id=job_id, replica=self._replica)

    @property
    def _replica(self) -> str | None:
        return self.leases.owner if self.leases is not None else None

    def _done_with(self, job_id: str) -> None:
        self.store.mark_synced(job_id)
        self._last_new.pop(job_id, None)
        if self.leases is not None:
            self.leases.release([f"job:{job_id}"])

    def _fetch(self, state: JobState) -> tuple[list[Json], JobState]:
        """The API side of a job's sync (run in a worker thread): its new events (returned,
        oldest first, for :meth:`_write` to store), its snapshot again when they hint at a
        status change, and what a finished job's outputs need. A job known to be over reads
        its outputs beside its events (with 150 ms a request, a finished job's five reads
        took 0.75 s one after another, and the first run of a backfill waited on them). Once
        its events are read, nothing else that fails here fails the read: the events must
        reach the store (see :meth:`Outputs.prefetch`)."""
        ahead = None
        if mapping.is_terminal(state.status) and mapping.should_write_run(
            state.job, self.native_mode
        ):
            ahead = Beside(functools.partial(self.outputs.prefetch, state))
        try:
            fresh = self._new_events(state.job_id)
            fetched = self._fetched_at.get(state.job_id, float("-inf"))
            hinted = state.job_id in self._hinted
            self._hinted.discard(state.job_id)
            if hinted and fetched < self._cycle_started:
                try:
                    self.refresh(state.job_id)
                except RetryableError as error:
                    # The events read stay this cycle's (a source with a cursor of its own
                    # does not give them again); the snapshot is read next cycle.
                    self._hinted.add(state.job_id)
                    log.debug("job.refresh_later", job_id=state.job_id, error=str(error))
                else:
                    state = self.store.get_job(state.job_id) or state
        finally:
            if ahead is not None:
                ahead.result()  # its error, if any, is the job's
        if not mapping.should_write_run(state.job, self.native_mode):
            return fresh, state
        if mapping.is_terminal(state.status):
            if ahead is None:  # over only since the snapshot read above
                self.outputs.prefetch(state)
        elif fresh and epoch_ends_in(fresh, state.job):
            self.outputs.prefetch_checkpoints(state.job_id)
        return fresh, state

    def sync_job(self, state: JobState, stats: CycleStats) -> None:
        fresh, state = self._fetch(state)
        self._write(state, stats, fresh)

    def _write(self, state: JobState, stats: CycleStats, fresh: Sequence[Json] = ()) -> None:
        """The store and W&B side of a job's sync (on the calling thread); errors raise."""
        stats.events += self.store.add_events(state.job_id, fresh)
        if self._prepare(state):
            self._complete(state, *self._place([state])[state.job_id], stats)

    def _write_many(
        self,
        read: Sequence[tuple[JobState, Sequence[Json]]],
        stats: CycleStats,
        refused: list[SinkUnavailable],
    ) -> None:
        """:meth:`_write` for the jobs whose reads are done, on this thread (the reading
        threads only read the store: SQLite has one writer). Their new events are stored in
        one transaction, then each run is made ready, then their pending rows are placed
        in one transaction and handed to W&B job by job. A job that fails is left for a
        later cycle; the others go on."""
        jobs = [state.job_id for state, _ in read]
        try:
            stats.events += self.store.add_events_many(
                [(state.job_id, fresh) for state, fresh in read]
            )
        except RetryableError as error:
            for job_id in jobs:
                self._failed(job_id, error, stats, refused)
            return
        ready: list[JobState] = []
        for state, _ in read:
            try:
                if self._prepare(state):
                    ready.append(state)
                else:
                    self._retrying.discard(state.job_id)
            except (JobNotFound, RetryableError) as error:
                self._failed(state.job_id, error, stats, refused)
        try:
            placed = self._place(ready)
        except RetryableError as error:
            for state in ready:
                self._failed(state.job_id, error, stats, refused)
            return
        for state in ready:
            try:
                self._complete(state, *placed[state.job_id], stats)
            except (JobNotFound, RetryableError) as error:
                self._failed(state.job_id, error, stats, refused)
            else:
                self._retrying.discard(state.job_id)

    def _prepare(self, state: JobState) -> bool:
        """What comes before a job's rows are placed: its run opened (or resumed), its
        links, dataset samples and result-file rows. False when it has no run to write."""
        job_id = state.job_id
        if not mapping.should_write_run(state.job, self.native_mode):
            self.store.set_run(job_id, "skipped")
            if mapping.is_terminal(state.status):
                self._done_with(job_id)
                self._final(job_id)
            return False
        self._ensure_open(state)
        self.links.link(state, self._spec)
        if self.dataset_rows:
            self.outputs.datasets(state, self.dataset_rows, self._spec)
        if state.status == "succeeded":
            self.outputs.result_files(state)
        return True

    def _place(
        self, states: Sequence[JobState]
    ) -> dict[str, tuple[list[StoredEvent], list[PlacedRow]]]:
        """The jobs' pending events placed at their W&B steps, one transaction for all: the
        steps are written (committed) before the rows go, so a crash in between sends them
        again at these steps. For each job: its pending events and the rows to log."""
        rows: dict[str, list[PlacedRow]] = {state.job_id: [] for state in states}

        def place(job_id: str, pending: list[StoredEvent], last_step: int) -> dict[str, int]:
            placed, placements = place_rows(pending, last_step)
            rows[job_id].extend(placed)
            return placements

        pending = self.store.send_pending_many(list(rows), place)
        return {job_id: (pending.get(job_id, []), rows[job_id]) for job_id in rows}

    def _complete(
        self,
        state: JobState,
        pending: list[StoredEvent],
        placed: list[PlacedRow],
        stats: CycleStats,
    ) -> None:
        """What comes after a job's rows are placed: the rows logged, checkpoints, summary,
        and for a finished job its outputs and the run's end."""
        job_id = state.job_id
        terminal = mapping.is_terminal(state.status)
        logged = self._log_placed(job_id, pending, placed, stats)
        if terminal or epoch_ended(logged, state.job):
            self.outputs.checkpoints(state)
        self.sink.update_summary(job_id, self._summary(state, logged))
        if terminal:
            if state.status == "failed":
                self.sink.alert(job_id, *mapping.alert_text(state.job))
            self.outputs.model(state)
            if self.sampler is not None:
                self.sampler.run(state)
            self.sink.finish(job_id, mapping.exit_code(state.status))
            self.store.close_run(job_id, "finished")
            self._done_with(job_id)
            self._final(job_id)
            self.links.link_children(state, self._spec)
            stats.runs_finished += 1
            log.info("run.finished", job_id=job_id, status=state.status, replica=self._replica)

    def _final(self, job_id: str) -> None:
        if self.on_final is not None:
            self.on_final(job_id)

    def fetch_events(self, job_id: str) -> int:
        """Read events newest first until one already stored; store the new ones oldest first."""
        return self.store.add_events(job_id, self._new_events(job_id))

    def _new_events(self, job_id: str) -> list[Json]:
        """The events not stored yet, oldest first: pages newest first until one reaches what
        was stored before. The usual case, a first page that does, is one read of the store."""
        fresh: list[Json] = []
        last_new = self._last_new.get(job_id)
        first_page = None if last_new is None else max(FIRST_PAGE_MIN, 2 * last_new)
        for page in self.source.event_pages(job_id, first_page):
            known = self.store.known_event_ids(job_id, [str(e["id"]) for e in page])
            fresh.extend(e for e in page if str(e["id"]) not in known)
            if known:
                break
        fresh.reverse()
        return self._hint(job_id, fresh)

    def _hint(self, job_id: str, fresh: list[Json]) -> list[Json]:
        self._last_new[job_id] = len(fresh)
        if any(event.get("type") != "metrics" for event in fresh):
            self._hinted.add(job_id)  # messages come with status changes
        return fresh

    def _ensure_open(self, state: JobState) -> None:
        spec = self._spec(state.job)
        if not self.sink.is_open(state.job_id):
            lost = state.run_segment if state.run_state == "open" else None
            if state.run_state == "open":
                self.repair(state)
            opened = self.sink.open(spec)
            self.store.set_run(state.job_id, "open", opened.segment, spec.config)
            again = 0
            if opened.resumed_at is not None:
                again = self.store.recover_from_server(state.job_id, opened.resumed_at, lost)
            log.info(
                "run.opened",
                job_id=state.job_id,
                project=spec.project,
                segment=opened.segment,
                resumed_at=opened.resumed_at,
                rows_to_resend=again,
                replica=self._replica,
            )
        elif spec.config != state.config:
            self.sink.update_config(state.job_id, spec.config)
            self.store.set_run(state.job_id, "open", config=spec.config)

    def _log_placed(
        self,
        job_id: str,
        pending: list[StoredEvent],
        placed: list[PlacedRow],
        stats: CycleStats,
    ) -> list[StoredEvent]:
        if not pending:
            return []
        if placed:
            self.sink.log(job_id, placed)
        stats.rows_logged += len(placed)
        now = self._now()
        for event in pending:
            stats.saw_lag(event.event.get("created_at"), now)
        return pending

    def _summary(self, state: JobState, logged: list[StoredEvent]) -> Json:
        summary = mapping.run_summary(state.job)
        summary["source"] = self.source.name
        summary.update(self.links.summary(state.job))
        totals = [t for e in logged if (t := mapping.total_steps(e.event)) is not None]
        if totals:
            summary["total_steps"] = totals[-1]
        cost = prices.estimated_cost(
            state.job.get("model"), state.job.get("trained_tokens"), self.prices
        )
        if cost is not None:
            summary["estimated_cost_usd"] = cost
        return summary

    # Shutdown
    def close_runs(self, deadline: float | None = None, *, every: bool = False) -> None:
        """Close every open run of this bridge's source (``every``: of any source). A job
        already known to be over gets its final summary, outputs and exit code first; a job
        still going is closed as preempted (its run resumes at the next start). What a
        cleanly closed run held is durable."""
        for run_id in self.sink.open_runs():
            if deadline is not None and self._now() > deadline:
                log.warning("shutdown.runs_left_open", count=len(self.sink.open_runs()))
                return
            state = self.store.get_job(run_id)
            if state is not None and state.source != self.source.name and not every:
                continue
            if state is not None and mapping.is_terminal(state.status) and self._finalize(state):
                continue
            try:
                self.sink.finish(run_id, mapping.PREEMPTED_EXIT_CODE, preempted=True)
            except SinkUnavailable as error:
                log.warning("run.finish_failed", job_id=run_id, error=str(error))
                continue
            self.store.close_run(run_id, "closed")

    def _finalize(self, state: JobState) -> bool:
        """Write a terminal job's run to its end now (at shutdown); False if that failed
        (the API or W&B refused), and the run is to be closed as preempted instead."""
        try:
            self._write(state, CycleStats())
        except RetryableError as error:
            log.warning("run.final_write_failed", job_id=state.job_id, error=str(error))
            return not self.sink.is_open(state.job_id)
        return True


def place_rows(
    pending: Sequence[StoredEvent], last_step: int
) -> tuple[list[PlacedRow], dict[str, int]]:
    """The W&B step of each pending event's row: a row sent before keeps its step; a new
    row goes to its training step, or after the last step used when that is not higher (a
    row filled in after later ones: W&B drops lower steps); rows of one training step in
    the same batch merge into one. Returns the rows to log, in step order, and each event's
    step (events without metric values are placed at -1: nothing to log)."""
    placements: dict[str, int] = {}
    rows: dict[int, tuple[int, dict[str, float]]] = {}
    at_of_step: dict[int, int] = {}
    high = last_step
    for event in pending:
        row = mapping.metric_row(event.event)
        if row is None:
            placements[event.event_id] = -1
            continue
        at = event.wandb_step
        if at is None:
            at = at_of_step.get(row.step, max(row.step, high + 1))
        high = max(high, at)
        at_of_step[row.step] = at
        placements[event.event_id] = at
        rows.setdefault(at, (row.step, {}))[1].update(row.values)
    placed = [
        PlacedRow(at, mapping.MetricRow(step, values))
        for at, (step, values) in sorted(rows.items())
    ]
    return placed, placements


__all__ = ["Bridge", "CycleStats", "place_rows"]
