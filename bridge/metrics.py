"""Prometheus metrics of the bridge, on a registry of its own (no global state).

Counters and the cycle histogram move as the daemon works (:meth:`BridgeMetrics.cycle_succeeded`,
:meth:`BridgeMetrics.cycle_failed`, :meth:`BridgeMetrics.webhook_attempt`). Gauges that describe
what the store holds (jobs by status, webhook deliveries and queue depth) or what the process
has open (W&B runs) are read at scrape time through the callables given to
:meth:`BridgeMetrics.watch`, so they are right after a restart and never drift.

Every metric is named ``ftbridge_*``; the README of ``deploy/`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.errors import (
    JobNotFound,
    SinkUnavailable,
    SourceRejected,
    SourceUnavailable,
    StoreError,
)

if TYPE_CHECKING:
    from bridge.engine import CycleStats

log = structlog.get_logger(__name__)
T = TypeVar("T")

API_ERROR_KINDS = (
    "timeout",
    "connection",
    "rate_limited",
    "server_error",
    "auth",
    "rejected",
    "not_found",
    "bad_response",
)
WEBHOOK_OUTCOMES = ("delivered", "retry", "disable", "refused")
DELIVERY_STATES = ("held", "pending", "delivered", "failed", "disabled")
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def api_error_kind(error: SourceUnavailable | SourceRejected | JobNotFound) -> str:
    """The kind of a failed API call, from the bridge's error (``kind`` attribute first,
    else its class and the message :func:`bridge.sources.openai.translate` wrote)."""
    kind = getattr(error, "kind", None)
    if isinstance(kind, str):
        return kind
    text = str(error)
    if isinstance(error, JobNotFound):
        return "not_found"
    if isinstance(error, SourceRejected):
        return "auth" if "key was refused" in text else "rejected"
    for needle, found in (
        ("timed out", "timeout"),
        ("could not connect", "connection"),
        ("HTTP 429", "rate_limited"),
        ("HTTP ", "server_error"),
    ):
        if needle in text:
            return found
    return "bad_response"


@dataclass(frozen=True)
class Watched:
    """What a scrape reads from the live process. Each callable may raise; its metric is
    then left out of that scrape (and ``ftbridge_scrape_errors_total`` counts it)."""

    jobs_by_status: Callable[[], Mapping[str, int]] | None = None
    deliveries_by_state: Callable[[], Mapping[str, int]] | None = None
    open_runs: Callable[[], int] | None = None
    # Jobs left out because their id cannot be a W&B run id.
    quarantined: Callable[[], int] | None = None


class _LiveCollector(Collector):
    def __init__(self, watched: Watched, errors: Counter) -> None:
        self._watched = watched
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        w = self._watched
        jobs = self._read("jobs", w.jobs_by_status)
        if jobs is not None:
            yield _labelled("ftbridge_jobs", "Tracked jobs by status.", "status", jobs)
        deliveries = self._read("webhook_deliveries", w.deliveries_by_state)
        if deliveries is not None:
            full = {state: 0 for state in DELIVERY_STATES} | dict(deliveries)
            yield _labelled(
                "ftbridge_webhook_deliveries",
                "Webhook and chat deliveries in the outbox by state.",
                "state",
                full,
            )
            yield GaugeMetricFamily(
                "ftbridge_webhook_queue_depth",
                "Deliveries waiting to be sent (pending).",
                value=full["pending"],
            )
        runs = self._read("open_runs", w.open_runs)
        if runs is not None:
            yield GaugeMetricFamily(
                "ftbridge_wandb_open_runs", "W&B runs this process holds open.", value=runs
            )
        quarantined = self._read("quarantined", w.quarantined)
        if quarantined is not None:
            yield GaugeMetricFamily(
                "ftbridge_jobs_quarantined",
                "Jobs left out because their id cannot be a W&B run id.",
                value=quarantined,
            )

    def _read(self, name: str, read: Callable[[], T] | None) -> T | None:
        if read is None:
            return None
        try:
            return read()
        except Exception as error:  # noqa: BLE001 - a scrape never fails for one gauge
            self._errors.labels(name).inc()
            log.debug("metrics.read_failed", metric=name, error=str(error))
            return None


def _labelled(name: str, doc: str, label: str, values: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class BridgeMetrics:
    """The bridge's metrics; ``registry`` is what ``/metrics`` serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("ftbridge_build", "The running ftbridge.", registry=r).info({"version": __version__})
        self.cycles = Counter(
            "ftbridge_poll_cycles", "Poll cycles by outcome.", ["outcome"], registry=r
        )
        self.cycle_duration = Histogram(
            "ftbridge_poll_cycle_duration_seconds",
            "Duration of poll cycles (successful and failed).",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "ftbridge_poll_lag_seconds",
            "Age of the oldest event logged by the last cycle that logged rows "
            "(from its creation at the API to W&B).",
            registry=r,
        )
        self.last_success = Gauge(
            "ftbridge_last_successful_cycle_timestamp_seconds",
            "Unix time of the end of the last successful poll cycle.",
            registry=r,
        )
        self.events = Counter(
            "ftbridge_events_logged", "Job events read from the API and stored.", registry=r
        )
        self.rows = Counter("ftbridge_rows_logged", "Metrics rows handed to W&B.", registry=r)
        self.runs_finished = Counter(
            "ftbridge_runs_finished", "W&B runs finished because their job ended.", registry=r
        )
        self.api_errors = Counter(
            "ftbridge_api_errors", "Failed fine-tuning API calls by kind.", ["kind"], registry=r
        )
        self.wandb_errors = Counter(
            "ftbridge_wandb_errors", "Failures of W&B (open, log, summary, finish).", registry=r
        )
        self.store_errors = Counter(
            "ftbridge_store_errors", "Failures of the state store.", registry=r
        )
        self.other_errors = Counter(
            "ftbridge_unexpected_errors", "Poll cycles that crashed with a bug.", registry=r
        )
        self.webhook_attempts = Counter(
            "ftbridge_webhook_attempts",
            "Webhook and chat delivery attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        #: Unix time of the last successful cycle (what ``/readyz`` looks at).
        self.last_success_at: float | None = None
        self.scrape_errors = Counter(
            "ftbridge_scrape_errors",
            "Live gauges left out of a scrape because reading them failed.",
            ["metric"],
            registry=r,
        )
        self._zero_labels()

    def _zero_labels(self) -> None:
        """Every known label value exists from the start, so rate() and alerts see a 0."""
        for outcome in ("ok", "failed"):
            self.cycles.labels(outcome)
        for kind in API_ERROR_KINDS:
            self.api_errors.labels(kind)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_attempts.labels(outcome)

    def watch(self, watched: Watched) -> None:
        """Read these at every scrape (call once, at start-up)."""
        self.registry.register(_LiveCollector(watched, self.scrape_errors))

    # What the daemon reports
    def cycle_succeeded(self, stats: CycleStats, duration: float, now: float) -> None:
        self.cycles.labels("ok").inc()
        self.cycle_duration.observe(duration)
        self.last_success.set(now)
        self.last_success_at = now
        self.events.inc(stats.events)
        self.rows.inc(stats.rows_logged)
        self.runs_finished.inc(stats.runs_finished)
        if stats.lag_seconds is not None:
            self.lag.set(stats.lag_seconds)
        self.errors(stats.failures)

    def cycle_failed(self, error: BaseException, duration: float) -> None:
        self.cycles.labels("failed").inc()
        self.cycle_duration.observe(duration)
        self.errors([error])

    def errors(self, errors: Iterable[BaseException]) -> None:
        """Count errors by where they came from (the API by kind, W&B, the store)."""
        for error in errors:
            if isinstance(error, SourceUnavailable | SourceRejected | JobNotFound):
                self.api_errors.labels(api_error_kind(error)).inc()
            elif isinstance(error, SinkUnavailable):
                self.wandb_errors.inc()
            elif isinstance(error, StoreError):
                self.store_errors.inc()
            else:
                self.other_errors.inc()

    def webhook_attempt(self, outcome: str) -> None:
        self.webhook_attempts.labels(outcome).inc()


__all__ = ["API_ERROR_KINDS", "BridgeMetrics", "Watched", "api_error_kind"]
