"""Bad input at every edge: a clear log line or error, no crash, nothing lost."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.emulator import Emulator, JobScenario
from bridge.engine import Bridge
from bridge.errors import SourceUnavailable
from bridge.mapping import WandbDefaults
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore
from bridge.wandbfile import read_merged
from tests.canned_api import CannedAPI
from tests.conftest import BridgeProcess, wait_until
from tests.factories import job, message, metrics

MakeBridge = Callable[..., BridgeProcess]


def in_process_bridge(base_url: str, tmp_path: Path) -> Bridge:
    source = OpenAISource.create(api_key="k", base_url=base_url, timeout=5, max_retries=0)
    sink = WandbSink(WandbOptions(mode="offline", directory=tmp_path))
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    return Bridge(source, sink, store, WandbDefaults(project="bad"))


def test_malformed_events_unknown_status_and_nan_are_handled(tmp_path: Path) -> None:
    api = CannedAPI()
    api.jobs(job("ftjob-odd", status="warming_up"), {"object": "fine_tuning.job"})
    nan_event = metrics("ev-2", 2)
    nan_event["data"]["train_loss"] = math.nan
    api.events(
        "ftjob-odd",
        {"id": "ev-7", "type": "metrics", "data": {"step": "seven", "train_loss": 1}},
        {"id": "ev-6", "type": "metrics", "data": None},
        "not an event",
        {"id": "ev-5", "type": "moderation_checks", "data": {"passed": True}},
        {"type": "metrics", "data": {"step": 9}},  # no id
        nan_event,
        metrics("ev-1", 1),
        message("ev-0", "Fine-tuning job started"),
    )
    with api.serve() as base_url, capture_logs() as logs:
        bridge = in_process_bridge(base_url, tmp_path)
        stats = bridge.poll()
        assert stats.rows_logged == 2
        state = bridge.store.get_job("ftjob-odd")
        # An unknown status is kept as the provider's word, and watched as running.
        assert state is not None and state.status == "running" and not state.synced
        assert state.job["provider_status"] == "warming_up"
        api.jobs(job("ftjob-odd", status="succeeded", fine_tuned_model="ft:x"))
        bridge.poll()
        bridge.store.close()
    skipped = [entry for entry in logs if entry["event"] == "api.items_skipped"]
    assert skipped and skipped[0]["skipped"] >= 1
    run = read_merged(tmp_path, "ftjob-odd")
    assert run.steps == [1, 2]
    assert math.isnan(run.history[1]["train_loss"])
    assert run.summary["status"] == "succeeded"


def test_a_body_that_is_not_json_fails_the_cycle_with_a_clear_reason(tmp_path: Path) -> None:
    api = CannedAPI()
    api.put("/v1/fine_tuning/jobs", b"<html>gateway</html>")
    with api.serve() as base_url:
        bridge = in_process_bridge(base_url, tmp_path)
        with pytest.raises(SourceUnavailable, match="list jobs: the answer is not JSON"):
            bridge.poll()
        bridge.store.close()


def test_unreachable_api_is_said_once_and_the_daemon_stays_up(
    bridge_process: MakeBridge,
) -> None:
    bridge = bridge_process("http://127.0.0.1:9/v1")  # the discard port: nothing listens
    proc = bridge.start("run")
    wait_until(lambda: "cycle.failed" in bridge.raw_log(), 20, "a failed cycle")
    time.sleep(3)  # several more cycles, backing off
    assert proc.poll() is None, "still running"
    assert bridge.stop(proc) == 0
    failed = [line for line in bridge.logs() if line["event"] == "cycle.failed"]
    assert len(failed) == 1, "said once, not once per cycle"
    assert "could not connect" in failed[0]["error"]
    assert "Traceback" not in bridge.raw_log()


def test_a_wrong_key_is_a_clear_line_without_the_key(
    start_emulator: Callable[..., Emulator], bridge_process: MakeBridge
) -> None:
    emulator = start_emulator([JobScenario(n_steps=3)])
    bridge = bridge_process(emulator, OPENAI_API_KEY="sk-wrong-key-123456")
    result = bridge.run("sync", "--all")
    assert result.returncode == 1
    assert "API key was refused" in result.stderr and "401" in result.stderr
    assert "sk-wrong-key-123456" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FTBRIDGE_POLL_INTERVAL": "fast"}, "FTBRIDGE_POLL_INTERVAL"),
        ({"FTBRIDGE_POLL_INTERVAL": "0.1"}, "FTBRIDGE_POLL_INTERVAL"),
        ({"FTBRIDGE_DATABASE_URL": "mysql://x"}, "FTBRIDGE_DATABASE_URL"),
        ({"FTBRIDGE_WANDB_NATIVE_JOBS": "both"}, "FTBRIDGE_WANDB_NATIVE_JOBS"),
        ({"OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
        ({"FTBRIDGE_CONFIG": "/nonexistent/ftbridge.toml"}, "/nonexistent/ftbridge.toml"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(
    bridge_process: MakeBridge, env: dict[str, str], needle: str
) -> None:
    bridge = bridge_process("http://127.0.0.1:9/v1", **env)
    result = bridge.run("run", timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_a_toml_file_with_a_typo_names_the_key(bridge_process: MakeBridge, tmp_path: Path) -> None:
    config = tmp_path / "ftbridge.toml"
    config.write_text("poll_intervall = 5\n")
    bridge = bridge_process("http://127.0.0.1:9/v1")
    result = bridge.run("--config", str(config), "run", timeout=30)
    assert result.returncode == 2
    assert "poll_intervall" in result.stderr and str(config) in result.stderr


def test_a_corrupt_state_file_is_a_clear_error(bridge_process: MakeBridge) -> None:
    bridge = bridge_process("http://127.0.0.1:9/v1")
    bridge.db_path.write_bytes(b"this is not a database" * 100)
    result = bridge.run("sync", "--all", timeout=30)
    assert result.returncode == 1
    assert "state store" in result.stderr and "Traceback" not in result.stderr


def test_sqlite_refuses_a_second_process(
    start_emulator: Callable[..., Emulator], bridge_process: MakeBridge
) -> None:
    emulator = start_emulator([JobScenario(n_steps=3, created_offset=-3600)])
    bridge = bridge_process(emulator)
    first = bridge.start("run")
    wait_until(bridge.started, 30, "the first process up")
    second = bridge.run("sync", "--all", timeout=60)
    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert "in use by another ftbridge process" in line and "PostgreSQL" in line
    assert bridge.stop(first) == 0
    assert bridge.run("sync", "--all", timeout=60).returncode == 0, "free once the first is gone"
