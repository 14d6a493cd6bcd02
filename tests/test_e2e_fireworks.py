"""End to end with Fireworks AI: the emulator's Fireworks API, ``ftbridge run`` as a subprocess
with a ``[[sources]] kind = "fireworks"`` file, offline W&B read back from disk."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import RunLog, find_run_files, read_merged, read_run
from tests.conftest import API_KEY, BridgeProcess, new_bridge_process, new_emulator, wait_until

pytestmark = pytest.mark.e2e

MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
SFT = "accounts/emulator/supervisedFineTuningJobs"
DPO = "accounts/emulator/dpoJobs"
RFT = "accounts/emulator/reinforcementFineTuningJobs"


def fw(**fields: Any) -> JobScenario:
    return JobScenario(**({"provider": "fireworks", "model": MODEL} | fields))


def fireworks_bridge(workdir: Path, emulator: Emulator) -> BridgeProcess:
    """``ftbridge`` reading the emulator's Fireworks account, from a TOML file."""
    config = workdir / "ftbridge.toml"
    config.write_text(
        "[[sources]]\n"
        'name = "fw"\n'
        'kind = "fireworks"\n'
        'api_key_env = "FIREWORKS_API_KEY"\n'
        'account_id = "emulator"\n'
        f'base_url = "{emulator.base_url.removesuffix("/v1")}"\n'
    )
    return new_bridge_process(
        workdir, emulator, FTBRIDGE_CONFIG=str(config), FIREWORKS_API_KEY=API_KEY
    )


def resource(emulator: Emulator, name: str) -> dict[str, Any]:
    root = emulator.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body: dict[str, Any] = httpx.get(f"{root}/v1/{name}", headers=headers).json()
    if name.startswith(DPO):
        url = httpx.get(f"{root}/v1/{name}:getMetricsFileEndpoint", headers=headers).json()
        body["metricsFileSignedUrl"] = url["signedUrl"]
    return body


def expected_rows(emulator: Emulator, name: str) -> dict[int, dict[str, float]]:
    """What the API says of each step, read without the bridge: step -> values."""
    job = resource(emulator, name)
    if name.startswith(RFT):
        curves = json.loads(job["outputMetrics"])["curves"]
        rows: dict[int, dict[str, float]] = {}
        for curve, columns in curves.items():
            for i, step in enumerate(columns["step"]):
                for key, values in columns.items():
                    if key != "step" and values[i] is not None:
                        rows.setdefault(step, {})[f"{curve}/{key}"] = values[i]
        return rows
    lines = [json.loads(x) for x in httpx.get(job["metricsFileSignedUrl"]).text.splitlines()]
    return {
        line["step"]: {k: v for k, v in line.items() if k not in ("step", "timestamp")}
        for line in lines
    }


def assert_history_matches(run: RunLog, expected: dict[int, dict[str, float]]) -> None:
    assert [row["_step"] for row in run.history] == sorted(expected), "every step once"
    for row in run.history:
        for key, value in expected[row["_step"]].items():
            got = row[key]
            assert got == pytest.approx(value) or (math.isnan(got) and math.isnan(value)), key


@dataclass
class Mirrored:
    emulator: Emulator
    bridge: BridgeProcess


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrored]:
    """One daemon run over every kind of Fireworks job, read by the tests below."""
    fast = {"step_seconds": 0.5, "validate_seconds": 1, "queue_seconds": 1}
    emulator = new_emulator(
        [
            fw(id="old", method="reinforcement", n_steps=8, created_offset=-3600),
            fw(id="ok", n_steps=40, with_validation_file=True, **fast),
            fw(
                id="pref",
                method="dpo",
                n_steps=20,
                outcome="failed",
                fail_at_step=12,
                error_code="RESOURCE_EXHAUSTED",
                error_message="out of quota",
                **fast,
            ),
            fw(id="stop", n_steps=30, outcome="cancelled", cancel_at_step=8, **fast),
            fw(
                id="own",
                n_steps=6,
                integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
                **fast,
            ),
        ],
        time_scale=8,
    )
    bridge = fireworks_bridge(tmp_path_factory.mktemp("fireworks"), emulator)
    try:
        proc = bridge.start("run")
        wait_until(lambda: bridge.all_synced(5), 90, "every Fireworks job synced")
        assert bridge.stop(proc) == 0
        yield Mirrored(emulator, bridge)
    finally:
        bridge.kill_all()
        emulator.stop()


def test_every_fireworks_job_lands_on_its_run(mirrored: Mirrored) -> None:
    emulator, bridge = mirrored.emulator, mirrored.bridge
    ok = read_merged(bridge.wandb_dir, "fw-sft.emulator.ok")
    assert ok.run_id == ok.display_name == "fw-sft.emulator.ok"
    assert ok.config["model"] == MODEL
    assert ok.config["provider"] == "fireworks"
    assert ok.config["method"]["type"] == "supervised"
    assert ok.config["hyperparameters"]["epochs"] == 3
    assert ok.config["training_file"].startswith("accounts/emulator/datasets/")
    assert ok.config["validation_file"].startswith("accounts/emulator/datasets/")
    assert_history_matches(ok, expected_rows(emulator, f"{SFT}/ok"))
    assert len(ok.history) == 40
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set().union(*ok.history)
    assert ok.summary["status"] == "succeeded"
    assert ok.summary["fine_tuned_model"] == "accounts/emulator/models/ok"
    assert ok.exit_code == 0

    pref = read_merged(bridge.wandb_dir, "fw-dpo.emulator.pref")
    assert pref.config["method"]["type"] == "dpo"
    assert_history_matches(pref, expected_rows(emulator, f"{DPO}/pref"))
    assert len(pref.history) == 12
    assert pref.summary["status"] == "failed"
    assert pref.summary["error_code"] == "RESOURCE_EXHAUSTED"
    assert pref.summary["error_message"] == "out of quota"
    assert "fine_tuned_model" not in pref.summary
    assert pref.exit_code == 1

    stop = read_merged(bridge.wandb_dir, "fw-sft.emulator.stop")
    assert stop.summary["status"] == "cancelled" and stop.exit_code not in (None, 0)
    assert_history_matches(stop, expected_rows(emulator, f"{SFT}/stop"))

    old = read_merged(bridge.wandb_dir, "fw-rft.emulator.old")
    assert old.config["method"]["type"] == "reinforcement"
    assert_history_matches(old, expected_rows(emulator, f"{RFT}/old"))
    assert len(old.history) == 8 and old.exit_code == 0

    assert find_run_files(bridge.wandb_dir, "fw-sft.emulator.own") == [], "left to Fireworks"
    assert "Traceback" not in bridge.raw_log()
    assert API_KEY not in bridge.raw_log()


def test_runs_carry_fireworks_tags_and_the_provider_status(mirrored: Mirrored) -> None:
    ok = read_merged(mirrored.bridge.wandb_dir, "fw-sft.emulator.ok")
    assert set(ok.tags) >= {
        "fireworks/fine-tuning",
        "fireworks/fw-sft.emulator.ok",
        f"fireworks/{MODEL}",
    }
    assert not any(tag.startswith("openai/") for tag in ok.tags)
    assert ok.summary["provider_status"] == "JOB_STATE_COMPLETED"
    pref = read_merged(mirrored.bridge.wandb_dir, "fw-dpo.emulator.pref")
    assert pref.summary["provider_status"] == "JOB_STATE_FAILED"


def test_kill_9_mid_job_and_restart_log_every_step_once(
    tmp_path: Path, start_emulator: Callable[..., Emulator]
) -> None:
    emulator = start_emulator(
        [fw(id="long", n_steps=120, validate_seconds=0, queue_seconds=0)], time_scale=10
    )
    bridge = fireworks_bridge(tmp_path, emulator)
    run_id = "fw-sft.emulator.long"
    try:
        proc = bridge.start("run")

        def some_steps_sent() -> bool:
            if not bridge.started():
                return False
            store = bridge.store()
            try:
                return sum(e.state != "new" for e in store.events(run_id) if e.step) >= 30
            finally:
                store.close()

        wait_until(some_steps_sent, 60, "30 steps handed to W&B")
        assert bridge.stop(proc, signal.SIGKILL) == -signal.SIGKILL
        second = bridge.start("run")
        wait_until(lambda: bridge.all_synced(1), 90, "the job synced after the restart")
        assert bridge.stop(second) == 0
    finally:
        bridge.kill_all()

    segments = [read_run(path) for path in find_run_files(bridge.wandb_dir, run_id)]
    steps = [step for segment in segments for step in segment.steps]
    assert len(steps) == len(set(steps)), "no step written twice"
    merged = read_merged(bridge.wandb_dir, run_id)
    assert_history_matches(merged, expected_rows(emulator, f"{SFT}/long"))
    assert len(merged.history) == 120
    assert merged.exit_code == 0 and merged.summary["status"] == "succeeded"


def test_sync_a_fireworks_job_by_its_run_id(
    tmp_path: Path, start_emulator: Callable[..., Emulator]
) -> None:
    emulator = start_emulator(
        [fw(id="done", n_steps=5, created_offset=-3600), fw(id="other", n_steps=5)]
    )
    bridge = fireworks_bridge(tmp_path, emulator)
    result = bridge.run("sync", "fw-sft.emulator.done", "fw-sft.emulator.nope")
    assert result.returncode == 1
    assert "fw-sft.emulator.nope" in result.stderr and "Traceback" not in result.stderr
    assert len(read_merged(bridge.wandb_dir, "fw-sft.emulator.done").history) == 5
    assert find_run_files(bridge.wandb_dir, "fw-sft.emulator.other") == []
