"""Lineage: a chain base -> ft1 (from a checkpoint of ft0) -> ft2, backfilled parents first and
children first, through the emulator's real HTTP API and the real wandb SDK: offline read back
from the ``.wandb`` files, online from the W&B test server's ``used_artifacts``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge import lineage
from bridge.emulator import Emulator, JobScenario, ids
from bridge.engine import Bridge
from bridge.links import Links
from bridge.mapping import WandbDefaults
from bridge.memory import MemorySink
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore
from bridge.testing import WandbServer
from bridge.wandbfile import read_merged
from tests.conftest import API_KEY, new_emulator
from tests.wandb_server import online_options, wandb_server_fixture

__all__ = ["wandb_server_fixture"]

BASE = "gpt-4o-mini-2024-07-18"


def tuned(job_id: str, base: str = BASE) -> str:
    """The emulator's fine-tuned model of a job trained on ``base``."""
    return f"ft:{base}:emulator::{ids.token('model', job_id, length=8)}"


FT1_MODEL = tuned("ftjob-zero") + ":ckpt-step-8"
FT2_MODEL = tuned("ftjob-one", FT1_MODEL)
CHAIN = [
    JobScenario(id="ftjob-zero", created_offset=-7200, n_steps=12, n_epochs=3),
    JobScenario(id="ftjob-one", model=FT1_MODEL, created_offset=-7100, n_steps=12, n_epochs=3),
    JobScenario(id="ftjob-two", model=FT2_MODEL, created_offset=-7000, n_steps=12, n_epochs=3),
]


def test_parent_of_a_model_and_of_a_checkpoint() -> None:
    index = lineage.ModelIndex(
        [{"id": "ftjob-zero", "model": BASE, "fine_tuned_model": tuned("ftjob-zero")}]
    )
    index.add({"id": "ftjob-one", "model": FT1_MODEL})
    child = index.parent_of({"id": "ftjob-one", "model": FT1_MODEL})
    assert child is not None
    assert child == lineage.Parent("ftjob-zero", "openai", FT1_MODEL, 8)
    assert child.artifact == "ftjob-zero-checkpoint:step-8"
    plain = index.parent_of({"id": "x", "model": tuned("ftjob-zero")})
    assert plain is not None and plain.artifact == "ftjob-zero-model:latest"
    assert index.parent_of({"id": "x", "model": BASE}) is None
    assert index.children_of(tuned("ftjob-zero")) == {"ftjob-one"}


def test_a_job_seen_while_the_index_is_refreshed_stays_indexed(tmp_path: Path) -> None:
    """The daemon's look at stale jobs sees jobs (``saw``) from its own thread, before they
    are stored; the cycle's refresh of the index from the store must not drop them."""
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    links = Links("openai", MemorySink(), store)
    links.saw({"id": "ftjob-zero", "model": BASE, "fine_tuned_model": tuned("ftjob-zero")})
    links.refresh_after = 0
    links.sweep(lambda job: pytest.fail("nothing to link"))  # ftjob-zero is not stored yet
    parent = links.parent_of({"id": "ftjob-one", "model": tuned("ftjob-zero")})
    assert parent is not None and parent.job_id == "ftjob-zero"


def backfill(emulator: Emulator, bridge: Bridge, order: list[int]) -> None:
    """Show the chain's jobs to the bridge one at a time, in this order."""
    for index in order:
        emulator.add_job(CHAIN[index])
        bridge.links.refresh_after = 0  # index the store again every cycle
        bridge.poll()
    bridge.close_runs()


def make_bridge(emulator: Emulator, sink: WandbSink, tmp_path: Path) -> Bridge:
    source = OpenAISource.create(
        api_key=API_KEY, base_url=emulator.base_url, timeout=10, max_retries=0
    )
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    return Bridge(source, sink, store, WandbDefaults(project="p"))


EXPECTED = {
    "ftjob-one": ("ftjob-zero", FT1_MODEL, "ftjob-zero-checkpoint", "step-8"),
    "ftjob-two": ("ftjob-one", FT2_MODEL, "ftjob-one-model", "latest"),
}


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0]], ids=["parents-first", "children-first"])
def test_offline_lineage_in_config_summary_and_tags(tmp_path: Path, order: list[int]) -> None:
    emulator = new_emulator([])
    try:
        sink = WandbSink(WandbOptions(mode="offline", directory=tmp_path))
        backfill(emulator, make_bridge(emulator, sink, tmp_path), order)
    finally:
        emulator.stop()
    root = read_merged(tmp_path, "ftjob-zero")
    assert "parent_job_id" not in root.config
    for child, (parent, model, _, _) in EXPECTED.items():
        run = read_merged(tmp_path, child)
        assert run.config["parent_job_id"] == parent and run.config["parent_model"] == model
        assert run.summary["parent_job_id"] == parent and run.summary["parent_model"] == model
        assert f"openai/parent/{parent}" in run.tags
        assert run.exit_code == 0 and run.summary["status"] == "succeeded"


@pytest.mark.e2e
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0]], ids=["parents-first", "children-first"])
def test_online_each_run_uses_its_parents_artifact(
    wandb_server: WandbServer, tmp_path: Path, order: list[int]
) -> None:
    emulator = new_emulator([])
    try:
        sink = WandbSink(online_options(wandb_server, tmp_path))
        backfill(emulator, make_bridge(emulator, sink, tmp_path), order)
    finally:
        emulator.stop()
    for child, (parent, _, name, alias) in EXPECTED.items():
        run = wandb_server.run(child, project="p")
        assert run is not None
        used: list[Any] = [wandb_server.artifact(i) for i in run.used_artifacts]
        assert [(a.name, alias in a.aliases) for a in used] == [(name, True)], child
        assert run.config["parent_job_id"] == parent
    root = wandb_server.run("ftjob-zero", project="p")
    assert root is not None and root.used_artifacts == []
