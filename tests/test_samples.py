"""Base vs fine-tuned samples through the emulator's chat completions (real HTTP, the openai
SDK) and the real wandb SDK offline: the table cell by cell, the caps, the budget, failing
chat calls, and a restart or replay that never asks (nor bills) twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.emulator import Emulator, JobScenario, chat
from bridge.engine import Bridge
from bridge.evals.bounds import Bounds
from bridge.evals.sampler import Chat, Sampler
from bridge.evals.samples import Answer
from bridge.mapping import ArtifactSpec, WandbDefaults
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore
from bridge.wandbfile import read_merged
from tests.conftest import API_KEY, new_emulator

BASE = "gpt-4o-mini-2024-07-18"


class Recording(WandbSink):
    """The real sink, keeping the artifacts it was given."""

    def __init__(self, options: WandbOptions) -> None:
        super().__init__(options)
        self.given: list[ArtifactSpec] = []

    def log_artifact(self, run_id: str, spec: ArtifactSpec) -> None:
        super().log_artifact(run_id, spec)
        self.given.append(spec)


def setup(
    tmp_path: Path, jobs: list[JobScenario], **bounds: Any
) -> tuple[Emulator, Bridge, Recording]:
    emulator = new_emulator(jobs)
    source = OpenAISource.create(
        api_key=API_KEY, base_url=emulator.base_url, timeout=10, max_retries=0
    )
    sink = Recording(WandbOptions(mode="offline", directory=tmp_path))
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    bridge = Bridge(source, sink, store, WandbDefaults(project="p"))
    bridge.sampler = Sampler(
        source,
        sink,
        store,
        Bounds(**{"limit": 3, "max_tokens": 5, **bounds}),
        read_file=source.file_content,
    )
    return emulator, bridge, sink


def done(job_id: str, **fields: Any) -> JobScenario:
    return JobScenario(id=job_id, created_offset=-7200, n_steps=6, n_epochs=2, **fields)


def tables(sink: Recording) -> list[list[list[Any]]]:
    return [spec.tables["samples"][1] for spec in sink.given if spec.key == "samples"]


def test_validation_conversations_cell_by_cell_and_once(tmp_path: Path) -> None:
    emulator, bridge, sink = setup(tmp_path, [done("ftjob-v", with_validation_file=True)])
    try:
        bridge.poll()
        tuned = bridge.store.get_job("ftjob-v").job["fine_tuned_model"]  # type: ignore[union-attr]
        assert emulator.counts["chat"] == 6
        [rows] = tables(sink)
        for index, row in enumerate(rows):
            messages = [{"role": "user", "content": f"validation example {index}"}]
            assert row[:4] == [
                f"user: validation example {index}",
                "ok",
                chat.answer(BASE, messages, 5),
                chat.answer(tuned, messages, 5),
            ]
            assert row[4:7] == [2, len(row[2]), len(row[3])]
        # A replay of the same job (a second sync, a restart) asks nothing again.
        bridge.store.set_run("ftjob-v", "pending")
        Bridge(bridge.source, sink, bridge.store, bridge.defaults).sync_one("ftjob-v", _stats())
        bridge.sampler.run(bridge.store.get_job("ftjob-v"))  # type: ignore[union-attr,arg-type]
        assert emulator.counts["chat"] == 6 and len(tables(sink)) == 1
    finally:
        emulator.stop()
    run = read_merged(tmp_path, "ftjob-v")
    assert run.summary["samples/count"] == 3
    assert run.summary["samples/base_exact_match"] == 0.0
    assert run.summary["samples/tokens"] > 0 and "samples/estimated_cost_usd" in run.summary
    assert [a["name"] for a in run.artifacts if a["type"] == "evaluation"] == ["ftjob-v-samples"]


def _stats() -> Any:
    from bridge.engine import CycleStats  # noqa: PLC0415

    return CycleStats()


def test_training_file_without_validation_and_the_cap(tmp_path: Path) -> None:
    emulator, bridge, sink = setup(tmp_path, [done("ftjob-t")], limit=500)
    try:
        bridge.poll()
    finally:
        emulator.stop()
    [rows] = tables(sink)
    assert len(rows) == 10  # the file's ten chats (500 is capped at 200 anyway)
    assert rows[0][0] == "user: training example 0"


def test_budget_exhausted_midway(tmp_path: Path) -> None:
    emulator, bridge, sink = setup(tmp_path, [done("ftjob-b")], token_budget=40)
    try:
        bridge.poll()
    finally:
        emulator.stop()
    [rows] = tables(sink)
    assert 0 < len(rows) < 3
    assert read_merged(tmp_path, "ftjob-b").summary["samples/stopped"] == "token budget reached"


@pytest.mark.parametrize("status", [429, 503])
def test_a_failing_chat_api_ends_the_samples_not_the_run(tmp_path: Path, status: int) -> None:
    emulator, bridge, sink = setup(tmp_path, [done("ftjob-f")])
    try:
        bridge.discover()
        state = bridge.store.get_job("ftjob-f")
        assert state is not None and bridge.sampler is not None
        sink.open(bridge._spec(state.job))
        training = bridge.source.file_content(str(state.job["training_file"]))
        bridge.sampler.read_file = lambda _file_id: training  # read before the API fails
        emulator.set_faults(error_rate=1.0, status=status)
        bridge.sampler.run(state)
        emulator.set_faults()
        sink.finish("ftjob-f", 0)
    finally:
        emulator.stop()
    assert tables(sink) == [[]]
    stopped = read_merged(tmp_path, "ftjob-f").summary["samples/stopped"]
    assert stopped.startswith("chat API")


def test_a_model_that_cannot_be_sampled(tmp_path: Path) -> None:
    emulator, bridge, _sink = setup(tmp_path, [done("ftjob-n", suffix="nosample")])
    try:
        bridge.poll()
        assert emulator.counts["chat"] == 2  # the base answered, the fine-tuned model refused
    finally:
        emulator.stop()
    run = read_merged(tmp_path, "ftjob-n")
    assert run.exit_code == 0 and run.summary["samples/stopped"].startswith("chat API")


class Killed(BaseException):
    """The process dies (not an error the sampler could catch)."""


class DiesAfter:
    """The source's chat, until the process dies after ``calls`` answers."""

    def __init__(self, chat: Chat, calls: int) -> None:
        self.inner = chat
        self.calls = calls

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer:
        if self.calls == 0:
            raise Killed
        self.calls -= 1
        return self.inner.chat(model, messages, max_tokens)


def test_a_restart_in_the_middle_asks_only_what_it_lacks(tmp_path: Path) -> None:
    emulator, bridge, sink = setup(tmp_path, [done("ftjob-r")])
    try:
        bridge.discover()
        state = bridge.store.get_job("ftjob-r")
        assert state is not None and isinstance(bridge.source, OpenAISource)
        sink.open(bridge._spec(state.job))
        bounds = Bounds(limit=3, max_tokens=5)
        read = bridge.source.file_content
        dying = Sampler(DiesAfter(bridge.source, 3), sink, bridge.store, bounds, read_file=read)
        with pytest.raises(Killed):
            dying.run(state)
        assert emulator.counts["chat"] == 3 and tables(sink) == []
        bridge.poll()  # the next process: the job is written to its end, with the samples
        bridge.poll()  # and a replay asks nothing more
        tuned = bridge.store.get_job("ftjob-r").job["fine_tuned_model"]  # type: ignore[union-attr]
        assert emulator.counts["chat"] == 6
    finally:
        emulator.stop()
    [rows] = tables(sink)
    for index, row in enumerate(rows):
        messages = [{"role": "user", "content": f"training example {index}"}]
        assert row[2:4] == [chat.answer(BASE, messages, 5), chat.answer(tuned, messages, 5)]
    assert read_merged(tmp_path, "ftjob-r").summary["samples/count"] == 3
