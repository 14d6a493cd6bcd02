"""A careless operator: bad JSON in a variable, a TOML file that is not UTF-8, a health URL that
is no URL, mistyped paths, names and variables, Ctrl-C at any moment. One line each, the right
exit code, no traceback, and no database made as a side effect."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.health import probe
from bridge.settings import load_settings, unknown_variables
from tests.conftest import BridgeProcess
from tests.hostile_api import HostileAPI

MakeBridge = Callable[..., BridgeProcess]
UNREACHABLE = "http://127.0.0.1:9/v1"


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("ftbridge:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    "variable",
    [
        "FTBRIDGE_WEBHOOKS",
        "FTBRIDGE_SOURCES",
        "FTBRIDGE_PRICES",
        "FTBRIDGE_CHATS",
        "FTBRIDGE_ROUTES",
        "FTBRIDGE_FILTERS",
    ],
)
def test_a_json_variable_that_is_not_json_is_one_line(
    bridge_process: MakeBridge, variable: str
) -> None:
    bridge = bridge_process(UNREACHABLE, **{variable: "{not json"})
    one_line_error(bridge.run("status"), 2, variable, "not valid JSON")


def test_a_toml_file_that_is_not_utf8_is_one_line(
    bridge_process: MakeBridge, tmp_path: Path
) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes("wandb_project = 'caf\xe9'\n".encode("latin-1"))
    bridge = bridge_process(UNREACHABLE)
    one_line_error(bridge.run("--config", str(config), "status"), 2, str(config), "UTF-8")


@pytest.mark.parametrize(
    ("value", "says"), [("inf", "finite"), ("1e300", "less than"), ("nan", "finite")]
)
@pytest.mark.parametrize(
    "field",
    ["shutdown_timeout", "backoff_max", "wandb_init_timeout", "poll_interval", "job_time_budget"],
)
def test_durations_are_finite_and_bounded(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, says: str
) -> None:
    variable = f"FTBRIDGE_{field.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: .*{says}"):
        load_settings()


def test_an_infinite_shutdown_timeout_is_refused_at_start(bridge_process: MakeBridge) -> None:
    bridge = bridge_process(UNREACHABLE, FTBRIDGE_SHUTDOWN_TIMEOUT="inf")
    one_line_error(bridge.run("run"), 2, "FTBRIDGE_SHUTDOWN_TIMEOUT", "finite")


def test_a_bad_eval_setting_in_a_route_is_one_line(
    bridge_process: MakeBridge, tmp_path: Path
) -> None:
    config = tmp_path / "routes.toml"
    config.write_text('[[routes]]\nproject = "big"\neval_samples = 1000\n')
    bridge = bridge_process(UNREACHABLE)
    one_line_error(
        bridge.run("--config", str(config), "run"),
        2,
        "route #1 (project 'big')",
        "eval_samples",
        "less than or equal to 200",
    )


def test_operator_commands_never_create_a_database(
    bridge_process: MakeBridge, tmp_path: Path
) -> None:
    missing = tmp_path / "typo" / "nope.db"
    bridge = bridge_process(UNREACHABLE, FTBRIDGE_DATABASE_URL=f"sqlite:///{missing}")
    for args in (
        ("webhooks", "list"),
        ("webhooks", "replay", "evt_x"),
        ("db", "current"),
        ("status",),
    ):
        one_line_error(bridge.run(*args), 1, "no state store")
    assert not missing.exists() and not missing.parent.exists()


def test_unknown_names_and_ids_are_said(bridge_process: MakeBridge) -> None:
    bridge = bridge_process(UNREACHABLE, FTBRIDGE_POLL_INTERVL="5")
    assert bridge.run("db", "upgrade").returncode == 0
    one_line_error(bridge.run("webhooks", "enable", "nope"), 1, "no webhook or chat target")
    replay = bridge.run("webhooks", "replay", "evt_nope")
    one_line_error(replay, 1, "no delivery or event")
    assert "configuration error" not in replay.stderr
    assert "did you mean FTBRIDGE_POLL_INTERVAL" in bridge.run("db", "current").stderr


def test_unknown_variables_name_the_closest_setting() -> None:
    lines = unknown_variables(
        {"FTBRIDGE_WEBHOOK_URL": "x", "FTBRIDGE_CONFIG": "y", "FTBRIDGE_TEST_X": "z", "HOME": "/"}
    )
    assert lines == [
        "FTBRIDGE_WEBHOOK_URL is not a setting ftbridge knows (ignored); "
        "did you mean FTBRIDGE_WEBHOOK_URLS?"
    ]


@pytest.fixture
def other_service() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    import threading  # noqa: PLC0415

    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    server.shutdown()
    server.server_close()


def test_health_checks_its_url_and_the_answer(
    bridge_process: MakeBridge, other_service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bridge = bridge_process(UNREACHABLE)
    one_line_error(bridge.run("health", "--url", "notaurl"), 2, "not an http")
    one_line_error(bridge.run("health", "--url", "file:///etc/passwd"), 2, "not an http")
    one_line_error(bridge.run("health", "--url", "http://127.0.0.1:x/"), 2, "port")
    assert probe(other_service) == 1
    assert "not with the bridge's readiness answer" in capsys.readouterr().err


def _entry(bridge: BridgeProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.entry", *args],
        env=bridge.env,
        cwd=bridge.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("after", [0.3, 1.0])
def test_ctrl_c_while_starting_is_quiet(bridge_process: MakeBridge, after: float) -> None:
    bridge = bridge_process(UNREACHABLE)
    proc = _entry(bridge, "run")
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in out + err


def test_a_signal_while_the_bridge_is_built_stops_the_daemon_once_up(
    bridge_process: MakeBridge,
) -> None:
    """SIGTERM after the settings are read but before the daemon polls (the bridge is being
    built, W&B set up): the daemon starts, sees it was told to stop, and exits 0."""
    bridge = bridge_process(UNREACHABLE, FTBRIDGE_LOG_FORMAT="json")
    bridge.env.pop("WANDB_MODE", None)  # offline for want of a key: said while building
    bridge.env.pop("WANDB_API_KEY", None)
    proc = _entry(bridge, "run")
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:  # said by build_bridge, before the daemon is up
        seen.append(line)
        if '"wandb.offline"' in line or len(seen) > 50:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    logged = "".join(seen) + err
    assert proc.returncode == 0, logged[-2000:]
    assert '"shutdown.requested"' in logged and '"shutdown.done"' in logged
    assert "Traceback" not in out + logged


def test_ctrl_c_during_sync_all_exits_130_quietly(bridge_process: MakeBridge) -> None:
    api = HostileAPI(slow_seconds=20)
    api.start()
    try:
        bridge = bridge_process(api.base_url, FTBRIDGE_REQUEST_TIMEOUT="30")
        proc = _entry(bridge, "sync", "--all")
        deadline = time.monotonic() + 30
        while not api.hits.get("/v1/fine_tuning/jobs/ftjob-slow/events"):
            assert time.monotonic() < deadline, "the sync never reached the slow job"
            time.sleep(0.1)
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert time.monotonic() - asked < 10
        assert "Traceback" not in out + err
        assert any(
            json.loads(line).get("event") == "sync.interrupted"
            for line in (out + err).splitlines()
            if line.startswith("{")
        )
    finally:
        api.stop()
