"""Benchmark 2, live lag: running jobs emitting a step per second, polled every 2 s.

The bridge runs in this process, built exactly as ``ftbridge run`` builds it
(``build_daemon_bridge`` and ``run_daemon``: the same APScheduler timer), against the
emulator in its own process. Two wrappers observe without changing anything (``Observer``):
one around the real ``WandbSink``'s ``log`` notes when it returned (the rows were handed to
W&B), one around ``Bridge.poll`` notes when each cycle starts and ends.

Event times: ``created_at`` has a resolution of one second. The scenario starts at a whole
second and every job's creation offset and step length are whole seconds, so every event
happens at a whole emulated second: its ``created_at`` is its exact emulated time, not a
floor. Emulated time is mapped to real time with the emulator's clock offset (measured with
``/_emulator/stats``, the sample with the shortest round trip). The lag of a row is then
(time ``log`` returned) - (real time of its event), exact to the millisecond. With the real
API, ``created_at`` is a floor and the same measurement would read up to 1 s high.

Events created before the first cycle ended are left out (that cycle opens every run and
catches up on the steps made before the bridge started: a backfill, not live lag).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import wandb

from bench.common import (
    API_KEY,
    PROJECT,
    EmulatorProcess,
    Result,
    percentile,
    running_jobs,
    say,
    slope_per_minute,
    table,
    tree_rss,
    verdict,
)
from bridge.app import build_daemon_bridge
from bridge.daemon import run_daemon
from bridge.emulator import Scenario
from bridge.engine import Bridge, CycleStats
from bridge.logs import configure_logging
from bridge.ports import PlacedRow
from bridge.settings import load_settings
from bridge.store import SqlStore

POLL_INTERVAL = 2.0


class Handoffs:
    """(run id, step, time handed to W&B) of every row, kept compactly: the benchmark runs in
    the bridge's process and its RSS is measured, so its own notes must not weigh (a list of
    tuples took about 130 bytes a row: 1.6 MB a minute at 200 rows a second; these 20)."""

    def __init__(self) -> None:
        self._runs: list[str] = []
        self._index: dict[str, int] = {}
        self._run = array("I")
        self._step = array("q")
        self._time = array("d")

    def add(self, run_id: str, steps: Iterable[int], now: float) -> None:
        index = self._index.setdefault(run_id, len(self._runs))
        if index == len(self._runs):
            self._runs.append(run_id)
        for step in steps:
            self._run.append(index)
            self._step.append(step)
            self._time.append(now)

    def __iter__(self) -> Iterator[tuple[str, int, float]]:
        for index, step, handed in zip(self._run, self._step, self._time, strict=True):
            yield self._runs[index], step, handed


class Observer:
    """Notes when rows are handed to W&B and when poll cycles run, by wrapping two bound
    methods of the bridge's own objects (its sink's ``log`` and its ``poll``): whatever
    else holds the sink sees the same wrapper, and nothing else changes."""

    def __init__(self, bridge: Bridge, emu: EmulatorProcess) -> None:
        self.handoffs = Handoffs()
        self.cycles: list[tuple[float, float, CycleStats]] = []
        # API requests each cycle made (the emulator's counters, read around it).
        self.requests: list[int] = []
        self._lock = threading.Lock()
        log_rows = bridge.sink.log
        poll = bridge.poll

        def timed_log(run_id: str, rows: Sequence[PlacedRow]) -> None:
            log_rows(run_id, rows)
            now = time.time()
            with self._lock:
                self.handoffs.add(run_id, (placed.row.step for placed in rows), now)

        def timed_poll() -> CycleStats:
            before = emu.stats()["request_count"]
            started = time.time()
            stats = poll()
            self.cycles.append((started, time.time(), stats))
            self.requests.append(int(emu.stats()["request_count"]) - int(before))
            return stats

        setattr(bridge.sink, "log", timed_log)  # noqa: B010 - an instance attribute on purpose
        setattr(bridge, "poll", timed_poll)  # noqa: B010


def run_lag(
    n_jobs: int,
    seconds: float,
    workdir: Path,
    *,
    poll: float = POLL_INTERVAL,
    step_seconds: float = 1.0,
    latency: float = 0.0,
    slack: float = 1.0,
) -> Result:
    """Lag of rows from running jobs (a step every ``step_seconds``), polled every ``poll``
    seconds with ``latency`` seconds per API request; target p95 < ``poll + slack``. Also
    counts API requests per cycle and samples the RSS of this process and its children
    (the wandb-core it starts), the emulator's process left out."""
    say(
        f"\n== 2. Live lag: {n_jobs} running jobs, a step every {step_seconds:g} s, poll "
        f"every {poll:g} s, {latency * 1000:g} ms per API request, {seconds:g} s measured =="
    )
    workdir.mkdir(parents=True, exist_ok=True)
    # Long enough to run past the first cycle (opening every run) and the window.
    steps = int((seconds + 180 + n_jobs * 0.2) / step_seconds)
    scenario = Scenario(
        seed=2,
        start_time=float(math.floor(time.time())),
        jobs=running_jobs(n_jobs, steps, step_seconds=step_seconds),
    )
    with EmulatorProcess(scenario, workdir, latency=latency) as emu:
        offset_before = emu.clock_offset()
        settings = load_settings(
            None,
            openai_api_key=API_KEY,
            openai_base_url=emu.base_url,
            wandb_mode="offline",
            wandb_dir=workdir,
            wandb_project=PROJECT,
            database_url=f"sqlite:///{workdir / 'state.db'}",
            poll_interval=poll,
            log_format="json",
            log_level="warning",
        )
        configure_logging(level=settings.log_level, fmt=settings.log_format)
        bridge = build_daemon_bridge(settings)
        if not isinstance(bridge, Bridge):
            raise TypeError("the lag benchmark expects one source (one Bridge)")
        observer = Observer(bridge, emu)
        # The bridge's footprint: this process and its wandb-core, not the emulator.
        sampler = RssSampler(os.getpid(), exclude=[emu.pid])
        sampler.start()

        def done() -> bool:
            cycles = observer.cycles
            return bool(cycles) and time.time() > cycles[0][1] + seconds

        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        started = time.time()
        try:
            run_daemon(
                bridge,
                interval=settings.poll_interval,
                backoff_max=30.0,
                shutdown_timeout=settings.shutdown_timeout,
                until=done,
            )
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bridge.store.close()
            sampler.stop()
            wandb.teardown()
        offset_after = emu.clock_offset()
    offset = (offset_before + offset_after) / 2
    result = _report(n_jobs, seconds, workdir, observer, started, offset, offset_after, poll, slack)
    result.update(
        step_seconds=step_seconds,
        latency_s=latency,
        requests_per_cycle=_requests_per_cycle(observer),
        rss_peak_mb=sampler.peak_mb,
        rss_slope_mb_per_min=sampler.slope_after(result["first_cycle_s"] + 30),
        rss_curve_mb=sampler.curve(),
    )
    say(
        f"  API requests per cycle after the first: {result['requests_per_cycle']} "
        f"(N + 1 = {n_jobs + 1} when nothing else is due); RSS of this process and its "
        f"wandb-core: peak {sampler.peak_mb:.0f} MB (target < 400: "
        f"{verdict(sampler.peak_mb < 400)}), slope after the first cycle + 30 s "
        f"{result['rss_slope_mb_per_min']:.2f} MB/min"
    )
    return result


def _requests_per_cycle(observer: Observer) -> Result:
    counts = observer.requests[1:]
    return {
        "p50": percentile(counts, 50),
        "max": max(counts, default=math.nan),
        "cycles": len(counts),
    }


class RssSampler:
    """The RSS of a process tree, sampled every second in a thread."""

    def __init__(self, pid: int, exclude: Sequence[int] = ()) -> None:
        self.pid = pid
        self.exclude = list(exclude)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._started = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(
                (time.monotonic() - self._started, tree_rss(self.pid, self.exclude) / 2**20)
            )

    @property
    def peak_mb(self) -> float:
        return max((mb for _, mb in self.samples), default=math.nan)

    def slope_after(self, seconds: float) -> float:
        return slope_per_minute([(t, mb) for t, mb in self.samples if t >= seconds])

    def curve(self) -> list[list[float]]:
        """Every tenth sample: (seconds, MB)."""
        return [[round(t), round(mb, 1)] for t, mb in self.samples[::10]]


def _event_times(workdir: Path) -> dict[tuple[str, int], int]:
    store = SqlStore(f"sqlite:///{workdir / 'state.db'}")
    try:
        return {
            (job.job_id, event.step): event.event["created_at"]
            for job in store.all_jobs()
            for event in store.events(job.job_id)
            if event.step is not None
        }
    finally:
        store.close()


def _report(  # noqa: PLR0917 - one call site, in order
    n_jobs: int,
    seconds: float,
    workdir: Path,
    observer: Observer,
    started: float,
    offset: float,
    offset_after: float,
    poll: float,
    slack: float,
) -> Result:
    created = _event_times(workdir)
    first_cycle_end = observer.cycles[0][1] if observer.cycles else started
    last_cycle_start = observer.cycles[-1][0] if observer.cycles else started
    lags: list[float] = []
    for job_id, step, handed in observer.handoffs:
        emulated = created.get((job_id, step))
        if emulated is None:
            continue
        real = emulated - offset
        if first_cycle_end <= real <= last_cycle_start:
            lags.append(handed - real)
    in_window = sum(
        1 for t in created.values() if first_cycle_end <= t - offset <= last_cycle_start
    )
    durations = [end - begin for begin, end, _ in observer.cycles[1:]]
    p50, p95, p99 = (percentile(lags, q) for q in (50, 95, 99))
    target = poll + slack
    say()
    say(
        table(
            f"Live lag, {n_jobs} jobs, poll {poll:g} s (event created -> row handed to W&B)",
            ["rows", "p50 s", "p95 s", "p99 s", "max s", "target p95 s", "result"],
            [
                [
                    len(lags),
                    p50,
                    p95,
                    p99,
                    max(lags, default=math.nan),
                    f"< {target:g}",
                    verdict(p95 < target),
                ]
            ],
        )
    )
    say(
        f"  rows measured {len(lags)} of {in_window} events created in the window "
        f"(first cycle end -> last cycle start); the first cycle (opening {n_jobs} runs "
        f"and catching up) took {first_cycle_end - started:.1f} s and is left out"
    )
    say(
        f"  poll cycles after the first: {len(durations)}, duration p50 "
        f"{percentile(durations, 50):.2f} s, p95 {percentile(durations, 95):.2f} s, "
        f"max {max(durations, default=math.nan):.2f} s"
    )
    say(
        f"  emulated clock - real clock: {offset * 1000:.1f} ms (drift over the run "
        f"{(offset_after - offset) * 2000:.1f} ms); created_at is exact (whole-second events)"
    )
    return {
        "jobs": n_jobs,
        "poll_interval_s": poll,
        "window_s": seconds,
        "rows": len(lags),
        "events_in_window": in_window,
        "p50_s": p50,
        "p95_s": p95,
        "p99_s": p99,
        "max_s": max(lags, default=math.nan),
        "target_p95_s": target,
        "target_met": p95 < target,
        "first_cycle_s": first_cycle_end - started,
        "cycle_p50_s": percentile(durations, 50),
        "cycle_p95_s": percentile(durations, 95),
        "cycle_max_s": max(durations, default=math.nan),
        "cycles": len(durations),
    }
