"""End to end for Together AI: the emulator's Together API, ``ftbridge run`` as a subprocess
with a ``[[sources]] kind = "together"`` configuration, offline W&B read back from disk."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import RunLog, find_run_files, read_merged, read_run
from tests.conftest import API_KEY, BridgeProcess, new_bridge_process, new_emulator, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
NATIVE = [{"type": "wandb", "wandb": {"project": "together-own", "name": "own-run"}}]


def together(job_id: str, **fields: Any) -> JobScenario:
    base: dict[str, Any] = {
        "provider": "together",
        "model": LLAMA,
        "validate_seconds": 0.5,
        "queue_seconds": 0.5,
        "finalize_seconds": 1,
        "step_seconds": 0.5,
    }
    return JobScenario(id=job_id, **{**base, **fields})


def api(emulator: Emulator, path: str) -> Any:
    host = emulator.base_url.removesuffix("/v1")
    return httpx.get(host + path, headers={"Authorization": f"Bearer {API_KEY}"}).json()


def expected_rows(emulator: Emulator, job_id: str) -> dict[int, dict[str, float]]:
    """Together's records merged per step, as the API gives them: what each W&B row holds."""
    rows: dict[int, dict[str, float]] = {}
    for record in api(emulator, f"/v1/fine-tunes/{job_id}/metrics")["metrics"]:
        values = {k: v for k, v in record.items() if k not in ("timestamp", "train/global_step")}
        rows.setdefault(record["train/global_step"], {}).update(values)
    return rows


def assert_history_matches(
    history: list[dict[str, Any]], expected: dict[int, dict[str, float]]
) -> None:
    steps = [row["_step"] for row in history]
    assert steps == sorted(expected), "every step once, in order"
    for row in history:
        assert row["step"] == row["_step"]
        for key, value in expected[row["_step"]].items():
            got = row[key]
            assert got == pytest.approx(value) or (math.isnan(got) and math.isnan(value)), key


def together_bridge(workdir: Path, emulator: Emulator) -> BridgeProcess:
    config = workdir / "ftbridge.toml"
    host = emulator.base_url.removesuffix("/v1")
    config.write_text(
        "[[sources]]\n"
        'name = "together"\n'
        'kind = "together"\n'
        'api_key_env = "TOGETHER_API_KEY"\n'
        f'base_url = "{host}"\n'
    )
    return new_bridge_process(
        workdir, emulator, FTBRIDGE_CONFIG=str(config), TOGETHER_API_KEY=API_KEY
    )


@dataclass
class Mirrored:
    emulator: Emulator
    bridge: BridgeProcess
    exit_code: int

    def run(self, job_id: str) -> RunLog:
        return read_merged(self.bridge.wandb_dir, job_id)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrored]:
    emulator = new_emulator(
        [
            together("ft-old", n_steps=8, created_offset=-3600, suffix="old"),
            together(
                "ft-ok",
                n_steps=30,
                n_epochs=3,
                with_validation_file=True,
                seed=11,
                hyperparameters={"lora_r": 8, "n_evals": 5, "learning_rate": 2e-5},
            ),
            together(
                "ft-bad",
                n_steps=20,
                outcome="failed",
                fail_at_step=6,
                error_message="Training diverged",
            ),
            together("ft-stop", n_steps=20, outcome="cancelled", cancel_at_step=5),
            together("ft-native", n_steps=6, integrations=NATIVE),
        ],
        time_scale=8,
    )
    bridge = together_bridge(tmp_path_factory.mktemp("together"), emulator)
    try:
        proc = bridge.start("run")
        wait_until(lambda: bridge.all_synced(5), 90, "every Together job synced")
        yield Mirrored(emulator, bridge, bridge.stop(proc))
    finally:
        bridge.kill_all()
        emulator.stop()


def test_the_daemon_stops_cleanly(mirrored: Mirrored) -> None:
    assert mirrored.exit_code == 0, mirrored.bridge.raw_log()[-3000:]
    assert "Traceback" not in mirrored.bridge.raw_log()


def test_every_step_lands_in_the_run_with_together_metric_names(mirrored: Mirrored) -> None:
    ok = mirrored.run("ft-ok")
    expected = expected_rows(mirrored.emulator, "ft-ok")
    assert len(expected) == 30
    assert_history_matches(ok.history, expected)
    keys = set().union(*ok.history)
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"} <= keys
    evals = [row["_step"] for row in ok.history if "eval/loss" in row]
    assert evals == [6, 12, 18, 24, 30], "eval values at their own steps"
    assert "timestamp" not in keys
    assert_history_matches(
        mirrored.run("ft-old").history, expected_rows(mirrored.emulator, "ft-old")
    )


def test_config_summary_and_exit_codes(mirrored: Mirrored) -> None:
    ok = mirrored.run("ft-ok")
    job = api(mirrored.emulator, "/v1/fine-tunes/ft-ok")
    assert ok.run_id == "ft-ok" and ok.project == "e2e"
    assert ok.config["model"] == LLAMA
    assert ok.config["seed"] == 11
    assert ok.config["training_file"] == job["training_file"]
    assert ok.config["validation_file"] == job["validation_file"]
    assert ok.config["method_type"] == "supervised"
    hyper = ok.config["hyperparameters"]
    assert hyper["learning_rate"] == 2e-5 and hyper["n_epochs"] == 3 and hyper["lora_r"] == 8
    assert hyper["train_on_inputs"] == "auto", "the method's own settings merged in"
    assert ok.summary["status"] == "succeeded"
    assert ok.summary["fine_tuned_model"] == job["model_output_name"]
    assert ok.summary["total_steps"] == 30
    assert ok.exit_code == 0

    bad = mirrored.run("ft-bad")
    assert bad.summary["status"] == "failed"
    assert bad.summary["error_message"] == "Training diverged"
    assert bad.exit_code == 1
    assert_history_matches(bad.history, expected_rows(mirrored.emulator, "ft-bad"))

    stop = mirrored.run("ft-stop")
    assert stop.summary["status"] == "cancelled"
    assert stop.exit_code == 130

    assert mirrored.run("ft-old").config["suffix"] == "old"
    assert find_run_files(mirrored.bridge.wandb_dir, "ft-native") == [], "left to Together"


def test_tags_name_together(mirrored: Mirrored) -> None:
    ok = mirrored.run("ft-ok")
    assert {"together/fine-tuning", "together/ft-ok", f"together/{LLAMA}"} <= set(ok.tags)
    assert not any(tag.startswith("openai/") for tag in ok.tags)


def test_the_summary_keeps_together_own_status(mirrored: Mirrored) -> None:
    assert mirrored.run("ft-ok").summary["provider_status"] == "completed"
    assert mirrored.run("ft-bad").summary["provider_status"] == "error"
    assert mirrored.run("ft-stop").summary["provider_status"] == "cancelled"


def test_kill_9_mid_job_then_restart_writes_every_step_once(tmp_path: Path) -> None:
    emulator = new_emulator(
        [
            together(
                "ft-long",
                n_steps=100,
                step_seconds=1.0,
                validate_seconds=0,
                queue_seconds=0,
                with_validation_file=True,
                hyperparameters={"n_evals": 20},
            )
        ],
        time_scale=10,
    )
    bridge = together_bridge(tmp_path, emulator)
    try:
        proc = bridge.start("run")

        def some_steps_sent() -> bool:
            if not bridge.started():
                return False
            store = bridge.store()
            try:
                return sum(e.state != "new" for e in store.events("ft-long") if e.step) >= 25
            finally:
                store.close()

        wait_until(some_steps_sent, 60, "25 steps handed to W&B")
        assert bridge.stop(proc, signal.SIGKILL) == -signal.SIGKILL
        second = bridge.start("run")
        wait_until(lambda: bridge.all_synced(1), 90, "the job synced after the restart")
        assert bridge.stop(second) == 0

        segments = [read_run(path) for path in find_run_files(bridge.wandb_dir, "ft-long")]
        all_steps = [step for segment in segments for step in segment.steps]
        assert len(all_steps) == len(set(all_steps)), "no step written twice"
        merged = read_merged(bridge.wandb_dir, "ft-long")
        assert_history_matches(merged.history, expected_rows(emulator, "ft-long"))
        assert len(merged.history) == 100
        assert sum("eval/loss" in row for row in merged.history) == 20
        assert merged.exit_code == 0
    finally:
        bridge.kill_all()
        emulator.stop()
