"""The long-running loop: an APScheduler interval timer around ``Bridge.poll``, backoff when
the API or W&B are in trouble, and a shutdown that finishes every open run."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from bridge.engine import Bridge, CycleStats
from bridge.entry import interrupted_early
from bridge.errors import BridgeError, Interrupted, RetryableError
from bridge.group import BridgeGroup
from bridge.leases import Leases
from bridge.metrics import BridgeMetrics

log = structlog.get_logger(__name__)


class Poller:
    """One tick = one poll cycle, unless a backoff is in force. Never raises."""

    def __init__(
        self,
        bridge: Bridge | BridgeGroup,
        interval: float,
        backoff_max: float,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.bridge = bridge
        self.metrics = metrics
        self.interval = interval
        self.backoff_max = backoff_max
        self.busy = threading.Lock()
        self.failures = 0
        self.not_before = 0.0
        self.last_success: float | None = None
        self.cycles = 0

    def tick(self) -> CycleStats | None:
        if self.bridge.stopping.is_set() or time.monotonic() < self.not_before:
            return None
        with self.busy:
            started = time.monotonic()
            try:
                stats = self.bridge.poll()
            except Interrupted as error:
                # A stop asked for mid-cycle: not a failure, and nothing to back off from.
                log.info("cycle.interrupted", reason=str(error))
                return None
            except RetryableError as error:
                self._failed(error, started)
                self._back_off(str(error), error.retry_after)
                return None
            except BridgeError as error:
                self._failed(error, started)
                self._back_off(str(error), None)
                return None
            except Exception as error:
                if self.failures == 0:  # the traceback once per streak, not every cycle
                    log.exception("cycle.crashed")
                self._failed(error, started)
                self._back_off("unexpected error (see the traceback above)", None)
                return None
            self._succeeded(stats, time.monotonic() - started)
            return stats

    def _failed(self, error: Exception, started: float) -> None:
        if self.metrics is not None:
            self.metrics.cycle_failed(error, time.monotonic() - started)

    def _back_off(self, reason: str, retry_after: float | None) -> None:
        self.failures += 1
        delay = min(self.backoff_max, self.interval * 2 ** min(self.failures, 16))
        delay = max(delay * random.uniform(0.5, 1.0), retry_after or 0.0)
        self.not_before = time.monotonic() + delay
        # Said once when the trouble starts, then only as debug: no log storm in an outage.
        emit = log.warning if self.failures == 1 else log.debug
        emit("cycle.failed", error=reason, failures=self.failures, retry_in=round(delay, 1))

    def _succeeded(self, stats: CycleStats, duration: float) -> None:
        if self.failures:
            log.info("cycle.recovered", after_failures=self.failures)
        self.failures = 0
        self.cycles += 1
        self.last_success = time.time()
        if self.metrics is not None:
            self.metrics.cycle_succeeded(stats, duration, self.last_success)
        log.info(
            "cycle",
            jobs_seen=stats.jobs_seen,
            active=stats.active,
            events=stats.events,
            rows_logged=stats.rows_logged,
            runs_finished=stats.runs_finished,
            lag_s=None if stats.lag_seconds is None else round(stats.lag_seconds, 2),
            errors=len(stats.errors),
            duration_s=round(duration, 3),
        )


_received: list[str] = []
"""Names of the signals received, for :func:`say_stop_requested`. The handler itself must
not log: it runs between two bytecodes of the main thread, which may be inside a log call
holding the output's lock (structlog's is not reentrant), and would wait on it forever."""


def install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        _received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if interrupted_early():  # a Ctrl-C during start-up that did not stop it
        _received.append(signal.Signals.SIGINT.name)
        stop.set()


def say_stop_requested() -> None:
    """Log the signals that asked for a stop since the last call (outside the handler)."""
    while _received:
        log.info("shutdown.requested", signal=_received.pop(0))


def run_daemon(
    bridge: Bridge | BridgeGroup,
    *,
    interval: float,
    backoff_max: float,
    shutdown_timeout: float,
    stop: threading.Event | None = None,
    until: Callable[[], bool] | None = None,
    metrics: BridgeMetrics | None = None,
    left_running: threading.Event | None = None,
) -> int:
    """Poll until ``stop`` is set (SIGTERM/SIGINT) or ``until()`` is true; then finish every
    open run within ``shutdown_timeout`` and return the exit code. ``left_running`` is set
    when a cycle was still under way at the deadline (the caller may then exit at once)."""
    stop = stop or threading.Event()
    install_signal_handlers(stop)
    bridge.recover()
    poller = Poller(bridge, interval, backoff_max, metrics)

    def tick() -> None:
        # A cycle that outlasts the interval is followed at once by the next: the timer
        # skips the slots it missed, which would leave every job a whole interval behind.
        while True:
            started = time.monotonic()
            poller.tick()
            if until is not None and until():
                stop.set()
            if stop.is_set() or time.monotonic() - started < interval:
                return

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        tick,
        "interval",
        seconds=interval,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    scheduler.start()
    if bridge.dispatcher is not None:
        bridge.dispatcher.start()
    keeper = LeaseKeeper(bridge.leases) if bridge.leases is not None else None
    if keeper is not None:
        keeper.start()
    log.info("daemon.started", poll_interval=interval)
    # Waits that time out: a signal the kernel hands to another thread is seen by the main
    # thread only when it wakes (an untimed wait would sleep through SIGTERM).
    while not stop.wait(0.5):
        pass
    say_stop_requested()
    deadline = time.monotonic() + shutdown_timeout
    bridge.stopping.set()
    scheduler.shutdown(wait=False)
    code = _drain(bridge, poller, deadline, left_running)
    if bridge.dispatcher is not None:
        # What is due now goes out; what is not delivered stays in the outbox for next start.
        bridge.dispatcher.flush(timeout=max(0.0, deadline - time.monotonic()))
        bridge.dispatcher.stop(timeout=max(1.0, deadline - time.monotonic()))
    if keeper is not None:
        keeper.stop()
        keeper.hand_back_all()
    return code


class LeaseKeeper:
    """Renews this replica's leases and heartbeat every third of the lease time, so that a
    long cycle does not lose them; gives them all back at shutdown."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftbridge-leases", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.leases.ttl / 3):
            try:
                self.leases.heartbeat()
                self.leases.renew()
            except Exception as error:  # noqa: BLE001 - the database may be away for a while
                if not self._failing:
                    log.warning("leases.renew_failed", error=str(error).splitlines()[0])
                self._failing = True
            else:
                if self._failing:
                    log.info("leases.renewed_again")
                self._failing = False

    def hand_back_all(self) -> None:
        """Give every lease back at once, so that other replicas take over without waiting."""
        try:
            self.leases.release_all()
        except Exception as error:  # noqa: BLE001 - they expire on their own anyway
            log.warning("leases.release_failed", error=str(error).splitlines()[0])
        else:
            log.info("leases.released")


def _drain(
    bridge: Bridge | BridgeGroup,
    poller: Poller,
    deadline: float,
    left_running: threading.Event | None = None,
) -> int:
    if not poller.busy.acquire(timeout=max(0.0, deadline - time.monotonic() - 5.0)):
        log.warning("shutdown.cycle_still_running", detail="runs are repaired at next start")
        if left_running is not None:
            left_running.set()
        return 0
    try:
        bridge.settle(timeout=max(0.0, min(5.0, deadline - time.monotonic() - 5.0)))
        bridge.close_runs(deadline=time.time() + max(0.0, deadline - time.monotonic()))
    finally:
        poller.busy.release()
    log.info("shutdown.done")
    return 0
