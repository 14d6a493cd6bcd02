"""Everything a fine-tune produces, for every method and provider, read back from the
``.wandb`` files: DPO, RFT, checkpoints, model, result file, datasets, Azure, several
sources with filters and routes, and a paused job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bridge import mapping
from bridge.emulator import Emulator, JobScenario
from bridge.wandbfile import RunLog, find_run_files, read_merged
from tests.conftest import API_KEY, BridgeProcess, new_bridge_process, new_emulator, wait_until

pytestmark = pytest.mark.e2e

StartEmulator = Callable[..., Emulator]
MakeBridge = Callable[..., BridgeProcess]
PAST = -7200


def finished(job_id: str, **fields: Any) -> JobScenario:
    return JobScenario(id=job_id, created_offset=PAST, **{"n_steps": 12, "n_epochs": 3, **fields})


def api_events(emulator: Emulator, job_id: str) -> list[dict[str, Any]]:
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    return [e.model_dump() for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]


def api_job(emulator: Emulator, job_id: str) -> dict[str, Any]:
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    return client.fine_tuning.jobs.retrieve(job_id).model_dump()


def artifacts_of(run: RunLog, kind: str) -> list[dict[str, Any]]:
    return [dict(a) for a in run.artifacts if a["type"] == kind]


@pytest.fixture(scope="module")
def backfilled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Emulator, BridgeProcess]]:
    """One backfill of every kind of job, shared by the tests that read its runs."""
    emulator = new_emulator(
        [
            finished("ftjob-sft", with_validation_file=True, events_missing_steps=[5]),
            finished("ftjob-b64", result_csv_base64=True, events_missing_steps=[3, 7]),
            finished("ftjob-dpo", method="dpo"),
            finished(
                "ftjob-rft",
                method="reinforcement",
                model="o4-mini-2025-04-16",
                graders=["exact_match", "judge"],
            ),
            finished(
                "ftjob-fail",
                outcome="failed",
                fail_at_step=6,
                error_code="oops",
                error_message="bad data",
            ),
            finished("ftjob-cancel", outcome="cancelled", cancel_at_step=4),
            finished("ftjob-azure", azure=True),
        ]
    )
    bridge = new_bridge_process(
        tmp_path_factory.mktemp("backfill"), emulator, FTBRIDGE_LOG_DATASETS="true"
    )
    result = bridge.run("sync", "--all")
    assert result.returncode == 0, result.stderr
    yield emulator, bridge
    emulator.stop()


def test_supervised_run_holds_every_step_checkpoints_model_results_and_cost(
    backfilled: tuple[Emulator, BridgeProcess],
) -> None:
    emulator, bridge = backfilled
    run = read_merged(bridge.wandb_dir, "ftjob-sft")
    job = api_job(emulator, "ftjob-sft")
    event_steps = {mapping.step_of(e) for e in api_events(emulator, "ftjob-sft")} - {None}
    assert 5 not in event_steps, "the scenario hides step 5 from the events"
    steps = sorted(int(row["step"]) for row in run.history)
    assert steps == list(range(1, 13)), "step 5 filled in from the result file, none twice"
    filled = next(row for row in run.history if row["step"] == 5)
    assert filled["train_loss"] > 0 and "train_mean_token_accuracy" in filled
    assert filled["_step"] > 12, "a filled-in row goes after the last one, plotted by 'step'"

    checkpoints = artifacts_of(run, "model")
    ckpt = [a for a in checkpoints if a["name"] == "ftjob-sft-checkpoint"]
    assert sorted(a["metadata"]["step"] for a in ckpt) == [4, 8, 12]
    assert all(a["entries"][0]["ref"].startswith("openai://ft:") for a in ckpt)
    assert all("train_loss" in a["metadata"]["metrics"] for a in ckpt)
    assert {f"step-{a['metadata']['step']}" for a in ckpt} <= {
        x for a in ckpt for x in a["aliases"]
    }
    (model,) = [a for a in checkpoints if a["name"] == "ftjob-sft-model"]
    assert {"latest", "ftjob-sft"} <= set(model["aliases"])
    assert model["metadata"]["fine_tuned_model"] == job["fine_tuned_model"]
    assert model["entries"][0]["ref"] == f"openai://{job['fine_tuned_model']}"
    (results,) = artifacts_of(run, "results")
    assert [e["path"] for e in results["entries"]] == ["results.csv"]
    datasets = {a["metadata"]["file_id"]: a for a in artifacts_of(run, "dataset")}
    assert set(datasets) == {job["training_file"], job["validation_file"]}
    for role in ("training", "validation"):
        artifact = datasets[job[f"{role}_file"]]
        assert artifact["name"] == run.config[f"{role}_file_artifact"]
        assert artifact["name"] == f"openai-{job[f'{role}_file']}"
        assert artifact["metadata"]["examples"] > 0
    assert run.summary["trained_tokens"] == job["trained_tokens"]
    assert run.summary["estimated_cost_usd"] == pytest.approx(job["trained_tokens"] / 1e6 * 3.0)
    assert run.summary["total_steps"] == 12


def test_base64_result_file_fills_in_missed_steps(
    backfilled: tuple[Emulator, BridgeProcess],
) -> None:
    _, bridge = backfilled
    run = read_merged(bridge.wandb_dir, "ftjob-b64")
    assert sorted(int(row["step"]) for row in run.history) == list(range(1, 13))


def test_dpo_keeps_every_numeric_key_and_beta(backfilled: tuple[Emulator, BridgeProcess]) -> None:
    emulator, bridge = backfilled
    run = read_merged(bridge.wandb_dir, "ftjob-dpo")
    assert run.config["hyperparameters"]["beta"] == 0.1
    assert run.config["method"]["type"] == "dpo"
    for event in api_events(emulator, "ftjob-dpo"):
        row = mapping.metric_row(event)
        if row is not None:
            logged = run.history_by_step[row.step]
            for key in ("train_dpo_margin", "train_chosen_logprob", "train_rejected_logprob"):
                assert logged[key] == pytest.approx(row.values[key])


def test_rft_nested_metrics_are_flattened_with_graders_by_name(
    backfilled: tuple[Emulator, BridgeProcess],
) -> None:
    _, bridge = backfilled
    run = read_merged(bridge.wandb_dir, "ftjob-rft")
    keys = set().union(*run.history)
    assert {
        "scores/train_reward_mean",
        "scores/exact_match/train_reward_mean",
        "scores/judge/train_reward_mean",
        "usage/completion_tokens_mean",
        "errors/grader_error_rate",
        "timing/sampling_seconds",
    } <= keys
    hyper = run.config["hyperparameters"]
    assert {"compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort"} <= set(hyper)
    grader = run.config["method"]["reinforcement"]["grader"]
    assert set(grader["graders"]) == {"exact_match", "judge"}
    assert {"name": "*", "step_metric": "step"} in [
        {"name": m["name"], "step_metric": m["step_metric"]} for m in run.metrics
    ]


def test_failed_cancelled_and_azure_jobs(backfilled: tuple[Emulator, BridgeProcess]) -> None:
    emulator, bridge = backfilled
    failed = read_merged(bridge.wandb_dir, "ftjob-fail")
    assert failed.exit_code == 1 and failed.summary["error_code"] == "oops"
    assert len(failed.alerts) == 1
    assert artifacts_of(failed, "results") == []
    cancelled = read_merged(bridge.wandb_dir, "ftjob-cancel")
    assert cancelled.exit_code not in (None, 0) and cancelled.summary["status"] == "cancelled"
    azure = read_merged(bridge.wandb_dir, "ftjob-azure")
    assert azure.config["organization_id"] is None
    assert "total_steps" not in azure.summary, "Azure omits total_steps"
    expected = {mapping.step_of(e) for e in api_events(emulator, "ftjob-azure")} - {None}
    assert {int(row["step"]) for row in azure.history} == expected
    assert azure.exit_code == 0


def test_two_sources_with_filters_and_routes(
    start_emulator: StartEmulator, bridge_process: MakeBridge, tmp_path: Path
) -> None:
    first = start_emulator(
        [
            finished("ftjob-a1", n_steps=4, n_epochs=1),
            finished("ftjob-a2", n_steps=4, n_epochs=1, model="gpt-4.1-2025-04-14"),
            finished("ftjob-a3", n_steps=4, n_epochs=1, metadata={"team": "nlp"}),
        ]
    )
    second = start_emulator([finished("ftjob-z1", n_steps=4, n_epochs=1, azure=True)])
    config = tmp_path / "ftbridge.toml"
    config.write_text(
        f"""
[[sources]]
name = "research"
api_key_env = "RESEARCH_KEY"
base_url = "{first.base_url}"
filters = {{ models = ["gpt-4o-mini*"] }}
wandb = {{ project = "research", tags = ["team-research"] }}

[[sources]]
name = "azure-eu"
kind = "azure"
api_key_env = "AZURE_KEY"
azure_endpoint = "{second.base_url.removesuffix("/v1")}"
api_version = "2025-04-01-preview"
wandb = {{ project = "azure-runs" }}

[[routes]]
metadata = {{ team = "nlp" }}
project = "nlp"
tags = ["nlp"]
"""
    )
    bridge = bridge_process(
        first,
        FTBRIDGE_CONFIG=str(config),
        RESEARCH_KEY=API_KEY,
        AZURE_KEY=API_KEY,
        OPENAI_API_KEY="",
    )
    result = bridge.run("sync", "--all")
    assert result.returncode == 0, result.stderr
    a1 = read_merged(bridge.wandb_dir, "ftjob-a1")
    assert a1.project == "research" and "team-research" in a1.tags
    assert "source/research" in a1.tags and a1.config["source"] == "research"
    assert find_run_files(bridge.wandb_dir, "ftjob-a2") == [], "filtered out by model"
    a3 = read_merged(bridge.wandb_dir, "ftjob-a3")
    assert a3.project == "nlp" and "nlp" in a3.tags
    z1 = read_merged(bridge.wandb_dir, "ftjob-z1")
    assert z1.project == "azure-runs" and z1.config["source"] == "azure-eu"
    assert len(z1.history) == 4


def test_paused_job_keeps_one_open_run_that_resumes(
    start_emulator: StartEmulator, bridge_process: MakeBridge
) -> None:
    emulator = start_emulator([], time_scale=4)
    bridge = bridge_process(emulator)
    proc = bridge.start("run")
    wait_until(bridge.started, 30, "the bridge up")
    emulator.add_job(
        JobScenario(id="ftjob-p", n_steps=20, step_seconds=0.5, pause_at_step=8, pause_seconds=8)
    )

    def paused_and_open() -> bool:
        store = bridge.store()
        try:
            state = store.get_job("ftjob-p")
            return state is not None and state.status == "paused" and state.run_state == "open"
        finally:
            store.close()

    wait_until(paused_and_open, 60, "the job paused with its run open")
    wait_until(lambda: bridge.all_synced(1), 60, "the job resumed and finished")
    assert bridge.stop(proc) == 0
    assert len(find_run_files(bridge.wandb_dir, "ftjob-p")) == 1, "one run, never closed"
    run = read_merged(bridge.wandb_dir, "ftjob-p")
    assert sorted(int(r["step"]) for r in run.history) == list(range(1, 21))
    assert run.exit_code == 0 and run.summary["status"] == "succeeded"
