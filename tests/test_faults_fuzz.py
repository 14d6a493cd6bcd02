"""Bad input fuzzed at the edges: the pure mapping code under hypothesis, and the whole bridge
(in-process, real HTTP through the SDK) against an API that answers nonsense. Nothing
crashes, each problem is logged, and good data next to bad data still lands."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import wandb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bridge import mapping, results
from bridge.engine import Bridge
from bridge.errors import RetryableError
from bridge.mapping import WandbDefaults
from bridge.outputs import epoch_ended
from bridge.ports import StoredEvent
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore
from bridge.wandbfile import find_run_files, read_merged
from tests.canned_api import CannedAPI
from tests.factories import job, message, metrics

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=10)

ARTIFACT_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


# -- the pure code -----------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_results_parse_arbitrary_bytes_raises_only_result_file_error(content: bytes) -> None:
    try:
        rows = results.parse(content)
    except results.ResultFileError:
        return
    for row in rows:
        assert isinstance(row.step, int) and row.step >= 0
        assert all(isinstance(v, float) for v in row.values.values())


csv_cells = st.text(alphabet=st.sampled_from(list('0123456789.-eE,nanifNAIF"\n\r x')), max_size=12)


@given(st.lists(st.lists(csv_cells, max_size=6), max_size=8), st.booleans())
@example([["\r0"]], False)  # found by hypothesis: csv.Error escaped
@example([["NAN"]], False)  # found by hypothesis: int(nan) raised ValueError
def test_results_parse_csv_like_text_plain_or_base64(
    records: list[list[str]], encode: bool
) -> None:
    """Text that gets past the header check (and its base64 form), with cells that are
    almost numbers, quotes, stray newlines and missing or extra columns."""
    text = "step,train_loss,train_accuracy,valid_loss\n" + "\n".join(",".join(r) for r in records)
    content = text.encode()
    if encode:
        content = base64.b64encode(content)
    try:
        rows = results.parse(content)
    except results.ResultFileError:
        return
    for row in rows:
        assert row.step >= 0
        assert "train_accuracy" not in row.values, "renamed to the events' name"
        for value in row.values.values():
            assert math.isfinite(value) or math.isnan(value)


def _valid_artifact(spec: mapping.ArtifactSpec) -> None:
    assert spec.name and set(spec.name) <= ARTIFACT_NAME_CHARS and len(spec.name) <= 128
    assert all(isinstance(a, str) and a for a in spec.aliases)
    json.dumps(spec.metadata)  # JSON (NaN allowed) for W&B's metadata
    wandb.Artifact(spec.name, type=spec.type, metadata=spec.metadata)  # W&B accepts it


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), json_objects, json_values, json_values, json_values)
def test_checkpoint_artifact_on_arbitrary_dicts(
    job_id: str, raw: dict[str, Any], model: Any, step: Any, metrics_value: Any
) -> None:
    for base in (raw, {**raw, "fine_tuned_model_checkpoint": model, "step_number": step}):
        checkpoint = {**base, "metrics": metrics_value} if metrics_value else base
        spec = mapping.checkpoint_artifact(job_id, checkpoint)
        if spec is None:
            continue
        _valid_artifact(spec)
        assert spec.reference == f"openai://{checkpoint['fine_tuned_model_checkpoint']}"
        assert all(isinstance(v, float) for v in spec.metadata["metrics"].values())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(json_objects, json_values, json_values)
def test_model_artifact_on_arbitrary_dicts(raw: dict[str, Any], ident: Any, model: Any) -> None:
    for job_json in (raw, {**raw, "id": ident, "fine_tuned_model": model}):
        spec = mapping.model_artifact(job_json)
        if spec is not None:
            _valid_artifact(spec)
            assert spec.aliases[0] == "latest"


@given(st.text(min_size=1, max_size=30))
def test_artifact_names_of_any_job_id_are_accepted_by_wandb(job_id: str) -> None:
    spec = mapping.model_artifact({"id": job_id, "fine_tuned_model": "ft:x"})
    assert spec is not None
    _valid_artifact(spec)


@given(st.lists(json_objects, max_size=5), json_objects, st.lists(json_values, max_size=5))
def test_epoch_ended_and_summary_never_raise(
    datas: list[dict[str, Any]], raw_job: dict[str, Any], steps: list[Any]
) -> None:
    events = [
        StoredEvent("j", f"e{i}", i, s if isinstance(s, int) else None, {"data": d}, "new")
        for i, (d, s) in enumerate(zip(datas, steps + [None] * len(datas), strict=False))
    ]
    epoch_ended(events, raw_job)
    mapping.run_summary(raw_job)
    mapping.alert_text(raw_job)
    mapping.exit_code(raw_job.get("status"))


# -- the whole bridge against an API that answers nonsense -------------------------------------


def make_bridge(base_url: str, directory: Path) -> Bridge:
    source = OpenAISource.create(api_key="k", base_url=base_url, timeout=5, max_retries=0)
    sink = WandbSink(WandbOptions(mode="offline", directory=directory))
    store = SqlStore(f"sqlite:///{directory / 'state.db'}")
    return Bridge(source, sink, store, WandbDefaults(project="fuzz"))


def good_job(job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    done = job(job_id, status="succeeded", fine_tuned_model=f"ft:{job_id}", trained_tokens=10)
    events = [metrics(f"{job_id}-m{i}", i) for i in range(3, 0, -1)]
    return done, [*events, message(f"{job_id}-start", "started")]


def events_of(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_nonsense_from_the_api_is_logged_and_good_data_still_lands(tmp_path: Path) -> None:
    api = CannedAPI()
    good, good_events = good_job("ftjob-good")
    good["result_files"] = ["file-png"]
    wrong_types = {
        "id": "ftjob-types",
        "status": 5,
        "created_at": "yesterday",
        "model": None,
        "hyperparameters": "x",
        "method": ["supervised"],
        "integrations": "wandb",
        "result_files": "file-1",
        "metadata": [1],
        "error": "boom",
        "trained_tokens": "many",
        "fine_tuned_model": 12,
        "seed": {"a": 1},
    }
    nan_job = job(
        "ftjob-nan", status="succeeded", trained_tokens=math.inf, estimated_finish=math.nan
    )
    huge = job("ftjob-huge", status="succeeded", suffix="s" * 100_000)
    jobs: list[dict[str, Any]] = [
        good,
        wrong_types,
        nan_job,
        huge,
        job("ftjob-unknown", status="warming_up"),
        job("ftjob-html"),
        {"id": "ftjob-bare"},  # every other field missing
        {"id": 42, "status": "running"},  # an id that is not a string
        {"object": "fine_tuning.job"},  # no id at all
    ]
    api.jobs(*jobs)
    api.events("ftjob-good", *good_events)
    api.put("/v1/files/file-png/content", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    api.events(
        "ftjob-types",
        {"id": "t3", "type": "metrics", "data": {"step": 3, "train_loss": "low"}},
        {"id": "t2", "type": "metrics", "data": [1, 2]},
        {"id": "t1", "type": ["metrics"], "data": {"step": 1}},
        {"id": 7, "type": "metrics", "data": {"step": 2}},
        metrics("t0", 1),
    )
    api.events(
        "ftjob-nan",
        {"id": "n3", "type": "metrics", "data": {"step": 3, "train_loss": math.inf}},
        {"id": "n2", "type": "metrics", "data": {"step": math.inf, "train_loss": 1.0}},
        {"id": "n1", "type": "metrics", "data": {"step": 1, "train_loss": math.nan}},
    )
    api.events(
        "ftjob-huge",
        {"id": "h2", "type": "message", "message": "x" * 4_000_000, "data": {}},
        metrics("h1", 1),
    )
    api.events(
        "ftjob-unknown",
        {"id": "u2", "type": "moderation_checks", "data": {"passed": True}},
        {"id": "u1", "type": "brand_new_type", "level": "mystery", "data": {"step": 1}},
        metrics("u0", 1),
    )
    api.put("/v1/fine_tuning/jobs/ftjob-html/events", b"<html>bad gateway</html>")
    api.events("ftjob-bare", metrics("b1", 1))
    with api.serve() as base_url, capture_logs() as logs:
        bridge = make_bridge(base_url, tmp_path)
        for _ in range(2):
            stats = bridge.poll()  # raises nothing: every problem is one job's, or skipped
        bridge.close_runs()
        bridge.store.close()

    assert stats.errors and all("ftjob-html" in e or "not JSON" in e for e in stats.errors)
    assert not events_of(logs, "cycle.crashed")
    skipped = events_of(logs, "api.items_skipped")
    assert skipped, "items without a string id are skipped and said so"
    unreadable = events_of(logs, "results.unreadable")
    assert [u["file_id"] for u in unreadable] == ["file-png"], "said once"
    retry = [e for e in events_of(logs, "job.retry_later") if e["job_id"] == "ftjob-html"]
    assert retry and "not JSON" in retry[0]["error"]

    run = read_merged(tmp_path, "ftjob-good")
    assert run.steps == [1, 2, 3] and run.exit_code == 0
    assert run.summary["fine_tuned_model"] == "ft:ftjob-good"
    assert [a["name"] for a in run.artifacts if a["type"] == "results"] == ["ftjob-good-results"]
    assert read_merged(tmp_path, "ftjob-types").steps == [1, 3]
    nan_run = read_merged(tmp_path, "ftjob-nan")
    assert nan_run.steps == [1, 3]
    assert math.isnan(nan_run.history[0]["train_loss"])
    assert nan_run.history[1]["train_loss"] == math.inf
    assert "trained_tokens" not in nan_run.summary, "infinity left out of the summary"
    assert read_merged(tmp_path, "ftjob-huge").steps == [1]
    unknown = read_merged(tmp_path, "ftjob-unknown").summary
    assert (unknown["status"], unknown["provider_status"]) == ("running", "warming_up")
    assert read_merged(tmp_path, "ftjob-bare").steps == [1]
    assert find_run_files(tmp_path, "42") == []


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(json_objects, st.lists(json_values | json_objects, max_size=6))
def test_fuzzed_job_and_events_next_to_a_good_job(
    raw_job: dict[str, Any], raw_events: list[Any]
) -> None:
    api = CannedAPI()
    raw_job = {**raw_job, "id": "ftjob-fuzz"}
    good, good_events = good_job("ftjob-fine")
    api.jobs(raw_job, good)
    api.events("ftjob-fuzz", *raw_events)
    api.events("ftjob-fine", *good_events)
    with (
        tempfile.TemporaryDirectory() as directory,
        api.serve() as base_url,
        capture_logs() as logs,
    ):
        bridge = make_bridge(base_url, Path(directory))
        try:
            try:
                bridge.poll()
            except RetryableError:
                pytest.fail("one job's bad data failed the whole cycle")
            bridge.close_runs()
        finally:
            bridge.store.close()
        assert not events_of(logs, "cycle.crashed")
        assert read_merged(directory, "ftjob-fine").steps == [1, 2, 3]


def test_a_listed_job_whose_events_are_gone_does_not_block_the_others(tmp_path: Path) -> None:
    api = CannedAPI()
    good, good_events = good_job("ftjob-later")
    # Listed (same created_at: ordered by id) before the good job; its events route is 404.
    api.jobs(job("ftjob-early-gone"), good)
    api.events("ftjob-later", *good_events)
    with api.serve() as base_url:
        bridge = make_bridge(base_url, tmp_path)
        try:
            bridge.poll()
            bridge.close_runs()
        finally:
            bridge.store.close()
    assert read_merged(tmp_path, "ftjob-later").steps == [1, 2, 3]
