"""One bridge, three providers: an OpenAI, a Together and a Fireworks source in one
``ftbridge run``, online against the W&B test server, through storms of 429 and 503 answers,
killed (the whole process tree) in the middle and started again. Every job's run carries its
provider's tags and status word, every step exactly once on the server, and the webhooks say
which provider a job is on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.testing import WandbServer
from tests.conftest import new_bridge_process, wait_until
from tests.test_e2e import expected_rows as openai_rows
from tests.test_e2e_fireworks import expected_rows as fireworks_rows
from tests.test_e2e_together import expected_rows as together_rows
from tests.wandb_server import wandb_env, wandb_server_fixture
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

__all__ = ["wandb_server_fixture"]

PROJECT = "providers"
FIREWORKS_RUN = "fw-sft.emulator.tune-1"
FIREWORKS_JOB = "accounts/emulator/supervisedFineTuningJobs/tune-1"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


def jobs() -> list[JobScenario]:
    quick: dict[str, Any] = {"validate_seconds": 0.5, "queue_seconds": 0.5, "step_seconds": 1}
    return [
        JobScenario(id="ftjob-openai1", n_steps=16, **quick),
        JobScenario(id="ft-together1", provider="together", model=LLAMA, n_steps=16, **quick),
        JobScenario(
            id="tune-1",
            provider="fireworks",
            model="accounts/fireworks/models/llama-v3p1-8b",
            n_steps=16,
            **quick,
        ),
    ]


def config_file(workdir: Path, emulator: Emulator) -> Path:
    host = emulator.base_url.removesuffix("/v1")
    path = workdir / "ftbridge.toml"
    path.write_text(
        f"""
[[sources]]
name = "oai"
api_key_env = "OPENAI_API_KEY"
base_url = "{emulator.base_url}"

[[sources]]
name = "tg"
kind = "together"
api_key_env = "OPENAI_API_KEY"
base_url = "{host}"

[[sources]]
name = "fw"
kind = "fireworks"
account_id = "emulator"
api_key_env = "OPENAI_API_KEY"
base_url = "{host}"
"""
    )
    return path


def test_openai_together_and_fireworks_in_one_bridge_online(
    start_emulator: Callable[..., Emulator], tmp_path: Path, wandb_server: WandbServer
) -> None:
    emulator = start_emulator(jobs(), time_scale=2.0)
    with Receiver([SECRET]) as receiver:
        bridge = new_bridge_process(
            tmp_path,
            emulator,
            FTBRIDGE_CONFIG=str(config_file(tmp_path, emulator)),
            FTBRIDGE_WEBHOOK_URLS=receiver.url,
            FTBRIDGE_WEBHOOK_SECRET=SECRET,
            FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
        )
        bridge.env = {
            **{k: v for k, v in bridge.env.items() if not k.startswith("WANDB_")},
            **wandb_env(tmp_path / "home", wandb_server),
            "WANDB_DIR": str(tmp_path),
            "WANDB_PROJECT": PROJECT,
            "WANDB_ENTITY": wandb_server.entity,
            "FTBRIDGE_WANDB_UPLOAD_INTERVAL": "3",
        }
        emulator.set_faults(error_rate=0.2, status=429, retry_after=0.2)
        first = bridge.start_and_wait("run")
        time.sleep(6)  # the jobs are training, every API answering 429 now and then
        bridge.kill_tree(first)
        emulator.set_faults(error_rate=0.2, status=503)
        again = bridge.start_and_wait("run")
        time.sleep(4)
        emulator.set_faults()
        wait_until(lambda: bridge.all_synced(3), 120, "every job of every provider synced")

        def ended() -> list[dict[str, Any]]:
            bodies = [json.loads(d.body) for d in list(receiver.received)]
            return [b for b in bodies if b["type"] == "fine_tuning.job.succeeded"]

        wait_until(lambda: len(ended()) >= 3, 60, "a succeeded webhook per job")
        assert bridge.stop(again) == 0
    providers = {e["data"]["id"]: e["data"]["provider"] for e in ended()}
    assert providers == {
        "ftjob-openai1": "openai",
        "ft-together1": "together",
        FIREWORKS_RUN: "fireworks",
    }
    words = {e["data"]["provider"]: e["data"]["provider_status"] for e in ended()}
    assert words == {
        "openai": "succeeded",
        "together": "completed",
        "fireworks": "JOB_STATE_COMPLETED",
    }
    expected = {
        "ftjob-openai1": openai_rows(emulator, "ftjob-openai1"),
        "ft-together1": together_rows(emulator, "ft-together1"),
        FIREWORKS_RUN: fireworks_rows(
            emulator, "accounts/emulator/supervisedFineTuningJobs/tune-1"
        ),
    }
    for run_id, provider in providers.items():
        run = wandb_server.run(run_id, project=PROJECT)
        assert run is not None, run_id
        assert f"{provider}/fine-tuning" in run.tags and f"{provider}/{run_id}" in run.tags
        assert run.duplicates("step") == [], run_id
        assert sorted(run.steps("step")) == sorted(expected[run_id]), run_id
        assert run.summary["status"] == "succeeded"
        assert run.summary["provider_status"] == words[provider]
        assert run.state == "finished" and run.exit_code == 0
