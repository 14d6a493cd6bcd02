"""One training file, one dataset artifact: jobs that trained on the same file share it, the
first run logs it, the others use it, and a restart logs no second version. Through the
emulator's real HTTP API and the real wandb SDK: offline read back from the ``.wandb`` files,
online from the W&B test server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.emulator import Emulator, JobScenario
from bridge.engine import Bridge
from bridge.mapping import WandbDefaults
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore
from bridge.testing import WandbServer
from bridge.wandbfile import find_run_files, read_merged, read_run
from tests.conftest import API_KEY, new_emulator
from tests.wandb_server import online_options, wandb_server_fixture

__all__ = ["wandb_server_fixture"]

SHARED = "file-shared"
NAME = f"openai-{SHARED}"


def job(job_id: str, offset: int) -> JobScenario:
    return JobScenario(
        id=job_id, created_offset=offset, n_steps=4, n_epochs=1, training_file=SHARED
    )


def bridge_for(emulator: Emulator, sink: WandbSink, tmp_path: Path) -> Bridge:
    source = OpenAISource.create(
        api_key=API_KEY, base_url=emulator.base_url, timeout=10, max_retries=0
    )
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    bridge = Bridge(source, sink, store, WandbDefaults(project="p"))
    bridge.dataset_rows = 5
    return bridge


def two_then_a_restart_and_a_third(
    tmp_path: Path, options: WandbOptions
) -> tuple[Emulator, list[str]]:
    """Jobs a and b on one file in one cycle; then a new process (a new bridge on the same
    store) meets job c on the same file, and a again (its run replayed)."""
    emulator = new_emulator([job("ftjob-a", -7200), job("ftjob-b", -7100)])
    sink = WandbSink(options)
    first = bridge_for(emulator, sink, tmp_path)
    first.poll()
    first.store.close()
    emulator.add_job(job("ftjob-c", -7000))
    again = bridge_for(emulator, sink, tmp_path)
    again.store.set_run("ftjob-a", "pending")  # a replay of a: it must not log it again
    again.poll()
    again.sync_one("ftjob-a", _stats())
    again.store.close()
    return emulator, ["ftjob-a", "ftjob-b", "ftjob-c"]


def _stats() -> Any:
    from bridge.engine import CycleStats  # noqa: PLC0415

    return CycleStats()


def test_offline_one_artifact_logged_once_and_named_by_every_run(tmp_path: Path) -> None:
    emulator, runs = two_then_a_restart_and_a_third(
        tmp_path, WandbOptions(mode="offline", directory=tmp_path)
    )
    emulator.stop()
    logged = [
        (run_id, artifact["name"])
        for run_id in runs
        for path in find_run_files(tmp_path, run_id)
        for artifact in read_run(path).artifacts
        if artifact["type"] == "dataset"
    ]
    assert [name for _, name in logged] == [NAME]  # by whichever run met the file first
    for run_id in runs:
        run = read_merged(tmp_path, run_id)
        assert run.config["training_file_artifact"] == NAME, run_id
        assert "validation_file_artifact" not in run.config
        assert run.exit_code == 0


@pytest.mark.e2e
def test_online_one_version_used_by_every_run(wandb_server: WandbServer, tmp_path: Path) -> None:
    emulator, runs = two_then_a_restart_and_a_third(
        tmp_path, online_options(wandb_server, tmp_path)
    )
    emulator.stop()
    versions = [a for r in wandb_server.runs() for a in r.artifacts if a.name == NAME]
    assert [(a.version, a.type) for a in versions] == [(0, "dataset")]
    (artifact,) = versions
    assert artifact.metadata["file_id"] == SHARED and artifact.metadata["examples"] > 0
    for run_id in runs:
        run = wandb_server.run(run_id, project="p")
        assert run is not None
        used = [wandb_server.artifact(i) for i in run.used_artifacts]
        assert [a.id for a in used if a is not None] == [artifact.id], run_id
        assert run.config["training_file_artifact"] == NAME


@pytest.mark.e2e
def test_online_a_dataset_w_and_b_lacks_is_logged_by_the_run_that_needs_it(
    wandb_server: WandbServer, tmp_path: Path
) -> None:
    """The store says another run logged the file, but W&B has no such artifact (that run
    was written offline and never synced): the run logs it itself instead of failing."""
    emulator = new_emulator([job("ftjob-a", -7200)])
    try:
        bridge = bridge_for(emulator, WandbSink(online_options(wandb_server, tmp_path)), tmp_path)
        bridge.store.mark_artifact("ftjob-offline", f"dataset:{NAME}", in_segment=False)
        bridge.poll()
    finally:
        emulator.stop()
    run = wandb_server.run("ftjob-a", project="p")
    assert run is not None and run.exit_code == 0
    logged = run.artifact(NAME)
    assert logged is not None and run.used_artifacts == [logged.id]
