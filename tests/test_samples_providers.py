"""Base vs fine-tuned samples of Together and Fireworks jobs: each source's own HTTP client and
key against the emulator's chat completions (Together's ``/v1/chat/completions``, Fireworks'
``/inference/v1/chat/completions``), the files read as each provider serves them (Fireworks:
a dataset's signed download URLs), the table checked cell by cell, and a failing chat API
that ends the samples, not the run. The real wandb SDK, offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from bridge.emulator import Emulator, JobScenario, chat
from bridge.engine import Bridge
from bridge.errors import JobNotFound
from bridge.evals.bounds import Bounds
from bridge.evals.sampler import Sampler
from bridge.mapping import WandbDefaults
from bridge.sink_wandb import WandbOptions
from bridge.sources.fireworks import FireworksSource
from bridge.sources.together import TogetherSource
from bridge.store import SqlStore
from bridge.wandbfile import read_merged
from tests.conftest import API_KEY, new_emulator
from tests.test_samples import Recording, tables

Source = TogetherSource | FireworksSource


@dataclass(frozen=True)
class Provider:
    name: Literal["together", "fireworks"]
    base_model: str
    run_id: str
    chat_kind: str  # the emulator's name for a chat request
    source: Callable[[str], Source]


def _together(host: str) -> Source:
    return TogetherSource.create(api_key=API_KEY, base_url=host, timeout=10, max_retries=0)


def _fireworks(host: str) -> Source:
    return FireworksSource.create(
        api_key=API_KEY, account_id="emulator", base_url=host, timeout=10, max_retries=0
    )


PROVIDERS = {
    "together": Provider(
        "together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "ft-s1", "chat", _together
    ),
    "fireworks": Provider(
        "fireworks",
        "accounts/fireworks/models/llama-v3p1-8b",
        "fw-sft.emulator.s1",
        "fw_chat",
        _fireworks,
    ),
}
JOB_IDS = {"together": "ft-s1", "fireworks": "s1"}


def setup(tmp_path: Path, name: str, **job: object) -> tuple[Emulator, Bridge, Recording]:
    provider = PROVIDERS[name]
    scenario = JobScenario(
        id=JOB_IDS[name],
        provider=provider.name,
        model=provider.base_model,
        created_offset=-7200,
        n_steps=6,
        n_epochs=2,
        **job,  # type: ignore[arg-type]
    )
    emulator = new_emulator([scenario])
    source = provider.source(emulator.base_url.removesuffix("/v1"))
    sink = Recording(WandbOptions(mode="offline", directory=tmp_path))
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    bridge = Bridge(source, sink, store, WandbDefaults(project="p"))
    bridge.sampler = Sampler(
        source, sink, store, Bounds(limit=3, max_tokens=5), read_file=source.file_content
    )
    return emulator, bridge, sink


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_validation_conversations_cell_by_cell(tmp_path: Path, name: str) -> None:
    provider = PROVIDERS[name]
    emulator, bridge, sink = setup(tmp_path, name, with_validation_file=True)
    try:
        bridge.poll()
        state = bridge.store.get_job(provider.run_id)
        assert state is not None and state.status == "succeeded"
        tuned = str(state.job["fine_tuned_model"])
        assert tuned != provider.base_model
        assert emulator.counts[provider.chat_kind] == 6  # 3 conversations, 2 models
    finally:
        emulator.stop()
    [rows] = tables(sink)
    assert len(rows) == 3
    for index, row in enumerate(rows):
        messages = [{"role": "user", "content": f"validation example {index}"}]
        base = chat.answer(provider.base_model, messages, 5, tuned=False)
        answer = chat.answer(tuned, messages, 5, tuned=True)
        assert base.startswith("base ") and answer.startswith("tuned ")
        assert row[:7] == [
            f"user: validation example {index}",
            "ok",
            base,
            answer,
            2,
            len(base),
            len(answer),
        ]
        assert all(isinstance(cell, float) and 0 <= cell < 5 for cell in row[7:9])
        # Tokens: the prompt's three words and one per word of the answer.
        assert row[9:] == [3 + len(base.split()), 3 + len(answer.split())]
    run = read_merged(tmp_path, provider.run_id)
    assert run.exit_code == 0
    assert run.summary["samples/count"] == 3
    assert run.summary["samples/tuned_exact_match"] == 0.0
    assert run.summary["samples/tokens"] == sum(row[9] + row[10] for row in rows)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_a_failing_chat_api_ends_the_samples_not_the_run(tmp_path: Path, name: str) -> None:
    provider = PROVIDERS[name]
    emulator, bridge, sink = setup(tmp_path, name)
    try:
        bridge.discover()
        state = bridge.store.get_job(provider.run_id)
        assert state is not None and bridge.sampler is not None
        sink.open(bridge._spec(state.job))
        training = bridge.source.file_content(str(state.job["training_file"]))
        assert training.count(b"training example") == 10
        bridge.sampler.read_file = lambda _file_id: training  # read before the API fails
        emulator.set_faults(error_rate=1.0, status=503)
        bridge.sampler.run(state)
        emulator.set_faults()
        sink.finish(provider.run_id, 0)
        assert emulator.counts[provider.chat_kind] == 1  # no retries: a failure ends it
    finally:
        emulator.stop()
    assert tables(sink) == [[]]
    summary = read_merged(tmp_path, provider.run_id).summary
    assert summary["samples/stopped"].startswith("chat API: chat with ")
    assert "503" in summary["samples/stopped"] and API_KEY not in summary["samples/stopped"]


def test_a_fireworks_dataset_is_read_only_by_its_resource_name(tmp_path: Path) -> None:
    emulator, bridge, _sink = setup(tmp_path, "fireworks")
    try:
        source = bridge.source
        for bad in ("../../v1/accounts/emulator/supervisedFineTuningJobs", "file-x", ""):
            with pytest.raises(JobNotFound):
                source.file_content(bad)
        with pytest.raises(JobNotFound):
            source.file_content("accounts/emulator/datasets/no-such-dataset")
        assert emulator.counts["fw_dataset_endpoint"] == 1  # only the well-formed name asked
    finally:
        emulator.stop()
