"""The status page on the health port, through real HTTP from a real store: off by default,
the bearer token, the headers, escaping; and in a real headless Chromium (Debian's package,
skipped with the reason when it is not installed): it renders, lists every job, follows the
store, and leaves a screenshot in the test's directory."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bridge.app import status_page
from bridge.health import HealthServer, Verdict
from bridge.metrics import BridgeMetrics
from bridge.settings import load_settings
from bridge.views.board import board
from bridge.views.page import CSP, StatusPage, svg_sparkline
from bridge.views.reader import BoardReader
from tests.postgres import fresh_database
from tests.views_store import NOW, Scenario, job

TOKEN = "st-4f9c0d1e8b7a6f5e4d3c2b1a"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path / "state.db")
    s.start()
    yield s
    s.close()


def serve(page: StatusPage | None) -> HealthServer:
    server = HealthServer(
        "127.0.0.1", 0, CollectorRegistry(), lambda: Verdict(True, "ok"), page=page
    )
    server.start()
    return server


@pytest.fixture
def page_server(scenario: Scenario) -> Iterator[HealthServer]:
    server = serve(StatusPage(scenario.store.engine, refresh=1))
    yield server
    server.stop()


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)  # noqa: S310 - the test server, on http://127.0.0.1
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_off_by_default(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("FTBRIDGE_STATUS_PAGE", raising=False)
    settings = load_settings(None, http_port=0)
    assert settings.status_page is False
    server = serve(status_page(settings, scenario.store.engine, BridgeMetrics()))
    try:
        assert get(server.url + "/")[0] == 404
        assert get(server.url + "/healthz")[0] == 200
    finally:
        server.stop()


def test_on_when_asked(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("FTBRIDGE_STATUS_PAGE", "true")
    metrics = BridgeMetrics()
    server = serve(status_page(load_settings(None, http_port=0), scenario.store.engine, metrics))
    try:
        code, _, body = get(server.url + "/")
        assert code == 200 and "ftjob-sft" in body
        assert "poll cycles: 0 ok, 0 failed" in body, "the daemon's own counters, in-process"
    finally:
        server.stop()


def test_the_token(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    settings = load_settings(None, http_port=0, status_page=True, status_token=TOKEN)
    assert TOKEN in settings.secrets(), "redacted from every log line"
    server = serve(status_page(settings, scenario.store.engine, BridgeMetrics()))
    try:
        code, headers, body = get(server.url + "/")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "ftjob" not in body
        assert get(server.url + "/", token="st-wrong")[0] == 401
        assert get(server.url + "/", token=TOKEN[:-1])[0] == 401
        code, _, body = get(server.url + "/", token=TOKEN)
        assert code == 200 and "ftjob-sft" in body
        assert TOKEN not in body
        assert get(server.url + "/readyz")[0] == 200, "the probes need no token"
    finally:
        server.stop()


def test_headers_and_self_contained_html(page_server: HealthServer) -> None:
    code, headers, body = get(page_server.url + "/")
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP
    assert headers["Cache-Control"] == "no-store"
    assert '<meta http-equiv="refresh" content="1">' in body
    assert "<script" not in body and "src=" not in body and "@import" not in body
    assert body.count("<svg") >= 2, "sparklines as inline SVG"
    for job_id in ("ftjob-sft", "ft-rft", "ftjob-dpo", "ftjob-old"):
        assert f'id="job-{job_id}"' in body
    assert "12/30" in body and "0.1429" in body


def test_everything_is_escaped(scenario: Scenario, page_server: HealthServer) -> None:
    hostile = job("ftjob-x", "running", '<script>alert("m")</script>', NOW, provider="openai")
    scenario.store.record_job("<b>src</b>", hostile)
    body = get(page_server.url + "/")[2]
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert "<b>src</b>" not in body


def test_sparkline_svg() -> None:
    assert svg_sparkline([]) == ""
    svg = svg_sparkline([3.0, 2.0, 1.0], width=100, height=20)
    assert svg.startswith("<svg") and 'points="0.0,2.0 50.0,10.0 100.0,18.0"' in svg


def chromium(*args: str, profile: Path) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_in_a_real_browser(scenario: Scenario, page_server: HealthServer, tmp_path: Path) -> None:
    url = page_server.url + "/"
    profile = tmp_path / "chromium-profile"
    dom = chromium("--dump-dom", url, profile=profile)
    assert "<table" in dom and "ftbridge: 4 job(s)" in dom
    for job_id in ("ftjob-sft", "ft-rft", "ftjob-dpo", "ftjob-old"):
        assert f'id="job-{job_id}"' in dom, f"{job_id} listed"
    row = dom.split('id="job-ftjob-sft"')[1].split("</tr>")[0]
    assert "running" in row and "12/30" in row and "<polyline" in row

    scenario.advance()
    dom = chromium("--dump-dom", url, profile=profile)
    row = dom.split('id="job-ftjob-sft"')[1].split("</tr>")[0]
    assert "succeeded" in row and "30/30" in row, "the page follows the store"
    rft = dom.split('id="job-ft-rft"')[1].split("</tr>")[0]
    assert 'href="https://wandb.ai/team/fine-tunes/runs/ft-rft"' in rft

    shot = tmp_path / "status-page.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,800", url, profile=profile)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1200, "IHDR width"
    print(f"status page screenshot: {shot}")


def test_the_board_reads_postgresql_too() -> None:
    with fresh_database() as url:
        scenario = Scenario(url)
        try:
            scenario.start()
            reader = BoardReader(scenario.store.engine)
            first = {j.job_id: j for j in board(reader.snapshot(), now=NOW).jobs}
            assert first["ftjob-sft"].steps_text == "12/30"
            assert first["ftjob-sft"].webhooks_pending == 2
            scenario.advance()
            second = {j.job_id: j for j in board(reader.snapshot(), now=NOW).jobs}
            assert second["ftjob-sft"].steps_text == "30/30"
            assert second["ft-rft"].metric == "reward"
        finally:
            scenario.close()
