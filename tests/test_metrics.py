"""Metrics: what each report moves, errors by kind, live gauges; and, end to end, the values
scraped from a running ``ftbridge run`` moving as the emulator's jobs progress."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable

import httpx2
import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.emulator import Emulator, JobScenario
from bridge.engine import CycleStats
from bridge.errors import BridgeError, SinkUnavailable, StoreError
from bridge.metrics import BridgeMetrics, Watched, api_error_kind
from bridge.sources.openai import translate
from tests.conftest import BridgeProcess, wait_until

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(metrics: BridgeMetrics) -> Samples:
    return samples(generate_latest(metrics.registry).decode())


def test_a_successful_cycle_moves_the_counters() -> None:
    metrics = BridgeMetrics()
    stats = CycleStats(events=7, rows_logged=5, runs_finished=1, lag_seconds=2.5)
    stats.failures.append(SinkUnavailable("W&B did not take a row of ftjob-1: boom"))
    metrics.cycle_succeeded(stats, 0.3, now=1_800_000_000.0)
    found = scrape(metrics)
    assert value(found, "ftbridge_poll_cycles_total", outcome="ok") == 1
    assert value(found, "ftbridge_events_logged_total") == 7
    assert value(found, "ftbridge_rows_logged_total") == 5
    assert value(found, "ftbridge_runs_finished_total") == 1
    assert value(found, "ftbridge_poll_lag_seconds") == 2.5
    assert value(found, "ftbridge_wandb_errors_total") == 1
    assert value(found, "ftbridge_last_successful_cycle_timestamp_seconds") == 1_800_000_000.0
    assert value(found, "ftbridge_poll_cycle_duration_seconds_count") == 1
    assert value(found, "ftbridge_poll_cycle_duration_seconds_bucket", le="0.5") == 1
    assert metrics.last_success_at == 1_800_000_000.0


def test_a_failed_cycle_counts_its_error_by_origin() -> None:
    metrics = BridgeMetrics()
    metrics.cycle_failed(StoreError("state store failed: disk I/O error"), 0.1)
    metrics.cycle_failed(ValueError("a bug"), 0.1)
    found = scrape(metrics)
    assert value(found, "ftbridge_poll_cycles_total", outcome="failed") == 2
    assert value(found, "ftbridge_store_errors_total") == 1
    assert value(found, "ftbridge_unexpected_errors_total") == 1
    assert metrics.last_success_at is None


# openai 3.x is built on httpx2.
REQUEST = httpx2.Request("GET", "https://api.example/v1/fine_tuning/jobs")


def status_error(cls: type[openai.APIStatusError], code: int) -> openai.APIStatusError:
    return cls("failed", response=httpx2.Response(code, request=REQUEST), body=None)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (openai.APITimeoutError(request=REQUEST), "timeout"),
        (openai.APIConnectionError(request=REQUEST), "connection"),
        (status_error(openai.RateLimitError, 429), "rate_limited"),
        (status_error(openai.InternalServerError, 503), "server_error"),
        (status_error(openai.AuthenticationError, 401), "auth"),
        (status_error(openai.PermissionDeniedError, 403), "auth"),
        (status_error(openai.NotFoundError, 404), "not_found"),
        (status_error(openai.BadRequestError, 400), "rejected"),
        (status_error(openai.ConflictError, 409), "server_error"),
    ],
)
def test_api_errors_by_kind(error: openai.OpenAIError, kind: str) -> None:
    translated = translate(error, "list jobs")
    assert api_error_kind(translated) == kind  # type: ignore[arg-type]
    metrics = BridgeMetrics()
    metrics.errors([translated])
    assert value(scrape(metrics), "ftbridge_api_errors_total", kind=kind) == 1


def test_every_kind_is_there_from_the_start() -> None:
    found = scrape(BridgeMetrics())
    for kind in ("timeout", "connection", "rate_limited", "server_error", "auth", "not_found"):
        assert ("ftbridge_api_errors_total", (("kind", kind),)) in found
    assert ("ftbridge_webhook_attempts_total", (("outcome", "delivered"),)) in found


def test_live_gauges_are_read_at_scrape_time() -> None:
    metrics = BridgeMetrics()
    jobs = {"running": 2, "succeeded": 5}
    metrics.watch(
        Watched(
            jobs_by_status=lambda: jobs,
            deliveries_by_state=lambda: {"pending": 3, "delivered": 9},
            open_runs=lambda: 2,
        )
    )
    found = scrape(metrics)
    assert value(found, "ftbridge_jobs", status="running") == 2
    assert value(found, "ftbridge_webhook_queue_depth") == 3
    assert value(found, "ftbridge_webhook_deliveries", state="delivered") == 9
    assert ("ftbridge_webhook_deliveries", (("state", "failed"),)) in found
    assert value(found, "ftbridge_wandb_open_runs") == 2
    jobs["running"] = 1
    assert value(scrape(metrics), "ftbridge_jobs", status="running") == 1


def test_a_gauge_that_cannot_be_read_is_left_out() -> None:
    metrics = BridgeMetrics()

    def broken() -> dict[str, int]:
        raise BridgeError("state store failed")

    metrics.watch(Watched(jobs_by_status=broken, open_runs=lambda: 1))
    found = scrape(metrics)
    assert not any(name == "ftbridge_jobs" for name, _ in found)
    assert value(found, "ftbridge_wandb_open_runs") == 1
    # The failure is counted during the scrape, so the next one shows it.
    assert value(scrape(metrics), "ftbridge_scrape_errors_total", metric="jobs") == 1


def test_registries_are_separate() -> None:
    one, two = BridgeMetrics(), BridgeMetrics()
    one.webhook_attempt("delivered")
    assert value(scrape(one), "ftbridge_webhook_attempts_total", outcome="delivered") == 1
    assert value(scrape(two), "ftbridge_webhook_attempts_total", outcome="delivered") == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - http test URL
        return str(response.read().decode())


def answers(url: str) -> bool:
    try:
        get_text(url)
    except OSError:
        return False
    return True


@pytest.mark.e2e
def test_scraped_metrics_move_as_jobs_progress(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator(
        [
            JobScenario(id="ftjob-early", n_steps=6, step_seconds=0.2),
            JobScenario(id="ftjob-long", n_steps=200, step_seconds=1.0, created_offset=1),
        ],
        time_scale=4,
    )
    port = free_port()
    bridge = bridge_process(emulator, FTBRIDGE_HTTP_PORT=str(port), FTBRIDGE_HTTP_HOST="127.0.0.1")
    proc = bridge.start("run")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz"), 60, "/readyz to answer 200")

    def rows_logged() -> float:
        return value(samples(get_text(f"{base}/metrics")), "ftbridge_rows_logged_total")

    wait_until(lambda: rows_logged() > 0, 60, "rows logged")
    first = samples(get_text(f"{base}/metrics"))
    wait_until(lambda: rows_logged() > value(first, "ftbridge_rows_logged_total"), 60, "more rows")
    second = samples(get_text(f"{base}/metrics"))
    for name in ("ftbridge_events_logged_total", "ftbridge_rows_logged_total"):
        assert value(second, name) > value(first, name), name
    cycles = ("ftbridge_poll_cycles_total",)
    assert value(second, *cycles, outcome="ok") > value(first, *cycles, outcome="ok")
    assert value(second, "ftbridge_poll_cycle_duration_seconds_count") > 0
    assert value(second, "ftbridge_jobs", status="running") == 1
    assert value(second, "ftbridge_wandb_open_runs") >= 1
    assert value(second, "ftbridge_last_successful_cycle_timestamp_seconds") > 0

    emulator.set_faults(down=True)

    def server_errors() -> float:
        found = samples(get_text(f"{base}/metrics"))
        return value(found, "ftbridge_api_errors_total", kind="server_error")

    wait_until(lambda: server_errors() > 0, 60, "API errors counted")
    failed = value(samples(get_text(f"{base}/metrics")), *cycles, outcome="failed")
    assert failed >= 1
    assert bridge.stop(proc) == 0
