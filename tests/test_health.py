"""The health server over real HTTP: /healthz, /readyz (and when it turns 503), /metrics; the
probe the container's HEALTHCHECK runs."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import BridgeError
from bridge.health import (
    CycleReadiness,
    HealthServer,
    Verdict,
    max_cycle_age,
    probe,
    readyz_url,
    store_ping,
)
from bridge.metrics import BridgeMetrics
from bridge.store import SqlStore, create_db_engine

NOW = 1_800_000_000.0


class LastCycle:
    """The readiness input a test moves by hand."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self) -> float | None:
        return self.at


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    (tmp_path / "state").mkdir()
    made = SqlStore(f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    yield made
    made.close()


@pytest.fixture
def last() -> LastCycle:
    return LastCycle()


@pytest.fixture
def server(store: SqlStore, last: LastCycle) -> Iterator[HealthServer]:
    metrics = BridgeMetrics()
    readiness = CycleReadiness(
        lambda: store_ping(store.engine), last, max_cycle_age(10), clock=lambda: NOW
    )
    made = HealthServer("127.0.0.1", 0, metrics.registry, readiness)
    made.start()
    yield made
    made.stop()


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http test URLs
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_healthz_answers_while_the_process_lives(server: HealthServer) -> None:
    status, content_type, body = get(f"{server.url}/healthz")
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {"status": "ok"}


def test_readyz_waits_for_the_first_cycle(server: HealthServer, last: LastCycle) -> None:
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "unready", "reason": "no poll cycle has succeeded yet"}
    last.at = NOW - 5
    status, _, body = get(f"{server.url}/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ready"
    assert json.loads(body)["last_success_age_seconds"] == 5.0


def test_readyz_turns_unready_when_the_last_cycle_is_stale(
    server: HealthServer, last: LastCycle
) -> None:
    last.at = NOW - max_cycle_age(10) - 1
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    reason = json.loads(body)["reason"]
    assert reason == "last successful poll cycle 91 s ago (limit 90 s)"


def test_readyz_turns_unready_when_the_store_is_gone(
    server: HealthServer, last: LastCycle, store: SqlStore, tmp_path: Path
) -> None:
    last.at = NOW
    assert get(f"{server.url}/readyz")[0] == 200
    for path in (tmp_path / "state").iterdir():
        path.unlink()
    (tmp_path / "state").rmdir()
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    reason = json.loads(body)["reason"]
    assert reason.startswith("state store unreachable: the SQLite file ")
    assert reason.endswith("state.db is gone")


def test_readyz_when_the_database_server_does_not_answer(last: LastCycle) -> None:
    # A PostgreSQL URL whose server is not there (a port nothing listens on).
    url = f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db?connect_timeout=2"
    engine = create_db_engine(url)
    last.at = NOW
    readiness = CycleReadiness(lambda: store_ping(engine), last, 90, clock=lambda: NOW)
    verdict = readiness()
    assert not verdict.ready
    assert verdict.reason.startswith("state store unreachable: ")
    assert "secret-pw" not in verdict.reason


def test_a_readiness_check_that_raises_is_an_answer(store: SqlStore) -> None:
    def broken() -> Verdict:
        raise RuntimeError("boom\nsecond line")

    made = HealthServer("127.0.0.1", 0, BridgeMetrics().registry, broken)
    made.start()
    try:
        status, _, body = get(f"{made.url}/readyz")
    finally:
        made.stop()
    assert status == 503
    assert json.loads(body)["reason"] == "readiness check failed: boom"


def test_metrics_serves_prometheus_text(server: HealthServer) -> None:
    status, content_type, body = get(f"{server.url}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"ftbridge_poll_cycles", "ftbridge_api_errors", "ftbridge_build_info"} <= names
    status, content_type, body = get(
        f"{server.url}/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_unknown_paths_are_404(server: HealthServer) -> None:
    status, _, body = get(f"{server.url}/admin")
    assert status == 404
    assert "/readyz" in json.loads(body)["error"]


def test_probe_exit_codes(
    server: HealthServer, last: LastCycle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert probe(f"{server.url}/readyz") == 1
    assert capsys.readouterr().err == "ftbridge: not ready: no poll cycle has succeeded yet\n"
    last.at = NOW
    assert probe(f"{server.url}/readyz") == 0
    assert capsys.readouterr().err == ""
    closed = f"http://127.0.0.1:{free_port()}/readyz"
    assert probe(closed, timeout=5) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ftbridge: health endpoint {closed} does not answer: ")
    assert err.count("\n") == 1


def test_a_taken_port_is_one_clear_error(server: HealthServer) -> None:
    second = HealthServer(
        "127.0.0.1", server.port, BridgeMetrics().registry, lambda: Verdict(True, "ok")
    )
    with pytest.raises(
        BridgeError, match=rf"^health server cannot listen on 127.0.0.1:{server.port}: "
    ):
        second.start()


def test_readyz_url_reaches_a_wildcard_bind() -> None:
    assert readyz_url("0.0.0.0", 9464) == "http://127.0.0.1:9464/readyz"
    assert readyz_url("::", 9464) == "http://[::1]:9464/readyz"
    assert readyz_url("10.1.2.3", 80) == "http://10.1.2.3:80/readyz"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
