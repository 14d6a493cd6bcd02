"""``ftbridge status`` from a real store and outbox; ``ftbridge check`` against a good
configuration and bad ones (API down, wrong key, private webhook target, bad setting,
unwritable store), never printing a secret."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.check import Row, check_store, check_targets, run_check
from bridge.cli import main
from bridge.emulator import Emulator, JobScenario
from bridge.notify import OutboxWriter
from bridge.status import age, run_status
from bridge.store import SqlStore
from bridge.webhooks import targets_from_settings
from tests.conftest import API_KEY

StartEmulator = Callable[..., Emulator]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_800_000_000


def metrics_event(n: int, step: int, total: int) -> dict[str, object]:
    return {
        "id": f"ftevent-{n}",
        "type": "metrics",
        "created_at": NOW - 30,
        "data": {"step": step, "total_steps": total, "train_loss": 1.0 / step},
    }


@pytest.fixture
def state_db(tmp_path: Path) -> str:
    """A store with two jobs: one running with 2 of 10 steps sent to W&B and a webhook
    pending, one that has not logged anything yet."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    targets = targets_from_settings(["http://127.0.0.1:9/hook"], SECRET, allow_private=True)
    store = SqlStore(url, on_change=OutboxWriter(targets, notify_backfill=True))
    running = {"id": "ftjob-run", "status": "running", "model": "m", "created_at": NOW - 60}
    store.record_job("openai", {**running, "status": "queued"})
    store.record_job("openai", running)
    store.add_events("ftjob-run", [metrics_event(i, i, 10) for i in (1, 2, 3)])
    store.mark_sent("ftjob-run", {"ftevent-1": 1, "ftevent-2": 2})
    store.set_run("ftjob-run", "open", "/state/wandb/offline-run-1-ftjob-run/run-ftjob-run.wandb")
    store.record_job("openai", {"id": "ftjob-new", "status": "validating_files", "created_at": NOW})
    store.close()
    return url


def test_status_json(state_db: str) -> None:
    out = io.StringIO()
    assert run_status(state_db, as_json=True, out=out, clock=lambda: NOW) == 0
    rows = {row["job_id"]: row for row in json.loads(out.getvalue())}
    run = rows["ftjob-run"]
    assert run["status"] == "running"
    assert (run["steps_logged"], run["total_steps"]) == (2, 10)
    assert run["last_event_age_seconds"] == 30
    assert run["run"] == "/state/wandb/offline-run-1-ftjob-run"
    assert run["pending_webhooks"] == 2, "first sight (queued), then running"
    new = rows["ftjob-new"]
    assert (new["steps_logged"], new["total_steps"], new["run"]) == (0, None, None)
    assert list(rows) == ["ftjob-new", "ftjob-run"], "newest first"


def test_status_table(state_db: str) -> None:
    out = io.StringIO()
    run_status(state_db, as_json=False, out=out, clock=lambda: NOW)
    text = out.getvalue()
    assert "2 tracked job(s)" in text
    line = next(line for line in text.splitlines() if "ftjob-run" in line)
    assert "running" in line and "2/10" in line and "30s" in line


def test_status_of_a_missing_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("FTBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ftbridge: error: no state store at ")
    assert err.count("\n") == 1
    assert not (tmp_path / "nowhere.db").exists(), "status does not create a store"


@pytest.mark.parametrize(
    ("seconds", "shown"), [(None, "-"), (5.9, "5s"), (61, "1m"), (7200, "2h"), (90000, "1d")]
)
def test_age(seconds: float | None, shown: str) -> None:
    assert age(seconds) == shown


# check
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def good_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, start_emulator: StartEmulator
) -> Emulator:
    emulator = start_emulator([JobScenario(id="ftjob-a", n_steps=5)])
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "WANDB_", "FTBRIDGE_")):
            monkeypatch.delenv(name)
    for name, value in {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": emulator.base_url,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "w"),
        "FTBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "FTBRIDGE_REQUEST_TIMEOUT": "5",
        "COLUMNS": "300",  # one line per row, whatever the terminal
    }.items():
        monkeypatch.setenv(name, value)
    return emulator


def check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(None, out)
    return code, out.getvalue() + capsys.readouterr().out


def row_of(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if f"│ {name} " in line)


def test_check_passes_on_a_good_configuration(
    good_env: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = check(capsys)
    assert code == 0, text
    assert "all checks passed" in text
    assert "OK" in row_of(text, "fine-tuning API")
    assert "offline" in row_of(text, "W&B")
    assert "not created yet" in row_of(text, "state store")
    assert API_KEY not in text


def test_check_the_real_command(good_env: Emulator, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


def test_check_fails_when_the_api_is_unreachable(
    good_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    code, text = check(capsys)
    assert code == 1
    assert "FAIL" in row_of(text, "fine-tuning API")
    assert "could not connect" in text
    assert "1 check(s) failed: fine-tuning API" in text


def test_check_fails_on_a_wrong_key_without_printing_it(
    good_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "sk-wrong-key-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    code, text = check(capsys)
    assert code == 1
    assert "FAIL" in row_of(text, "fine-tuning API")
    assert "the API key was refused" in text
    assert wrong not in text and "0123456789" not in text


def test_check_refuses_a_private_webhook_target(
    good_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FTBRIDGE_WEBHOOK_URLS", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("FTBRIDGE_WEBHOOK_SECRET", SECRET)
    code, text = check(capsys)
    assert code == 1
    assert "FAIL" in row_of(text, "webhooks")
    assert "'env-1'" in text and "FTBRIDGE_WEBHOOK_ALLOW_PRIVATE" in text
    assert SECRET not in text


def test_a_host_name_that_resolves_to_a_private_address_is_refused() -> None:
    targets = targets_from_settings(["http://hooks.internal.example/x"], SECRET)
    rows = list(check_targets(targets, resolve=lambda host, port: ["10.0.0.7"]))
    assert rows == [
        Row(
            "webhook env-1",
            "FAIL",
            "refused hooks.internal.example: 10.0.0.7 is not public (private); "
            "set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow",
        )
    ]
    public = list(check_targets(targets, resolve=lambda host, port: ["93.184.216.34"]))
    assert public[0].outcome == "OK"


def test_check_names_a_bad_setting(
    good_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FTBRIDGE_POLL_INTERVAL", "0")
    code, text = check(capsys)
    assert code == 1
    assert "FAIL" in row_of(text, "configuration")
    assert "FTBRIDGE_POLL_INTERVAL" in text


def test_check_store_states(tmp_path: Path) -> None:
    missing_dir = check_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'state.db'}")
    assert (
        missing_dir.outcome == "FAIL" and "does not exist or is not writable" in missing_dir.detail
    )
    url = f"sqlite:///{tmp_path / 'state.db'}"
    SqlStore(url).close()
    assert check_store(url).outcome == "OK"
    (tmp_path / "state.db").write_bytes(b"this is not a database, just bytes" * 200)
    broken = check_store(url)
    assert broken.outcome == "FAIL"
    assert "not a database" in broken.detail
