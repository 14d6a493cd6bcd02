"""The Together AI source against the emulator's Together API (real HTTP), and its pure parts
(jobs, metrics grouping) over generated input."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.emulator import Emulator, JobScenario
from bridge.emulator.together import CANCEL_SECONDS
from bridge.errors import ConfigError, JobNotFound, SourceRejected, SourceUnavailable
from bridge.ports import JobSource
from bridge.settings import Settings
from bridge.sources.config import SourceConfig, make_source
from bridge.sources.model import STATUSES as BRIDGE_STATUSES
from bridge.sources.together import (
    STATUSES,
    TogetherSource,
    metric_events,
    record_seconds,
    to_job,
)
from tests.canned_api import CannedAPI
from tests.conftest import API_KEY

StartEmulator = Callable[..., Emulator]
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
NATIVE = [{"type": "wandb", "wandb": {"project": "own", "entity": "me", "name": "my-run"}}]
HOUR = 3600.0


def together(job_id: str, **fields: Any) -> JobScenario:
    base: dict[str, Any] = {
        "provider": "together",
        "model": LLAMA,
        "validate_seconds": 0,
        "queue_seconds": 0,
        "finalize_seconds": 1,
    }
    return JobScenario(id=job_id, **{**base, **fields})


def source_for(emulator: Emulator, key: str = API_KEY, retries: int = 0) -> TogetherSource:
    return TogetherSource.create(
        api_key=key, base_url=emulator.base_url, timeout=5, max_retries=retries
    )


def raw(emulator: Emulator, path: str, **params: Any) -> Any:
    host = emulator.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.get(host + path, headers=headers, params=params, timeout=5).json()


def events_of(source: JobSource, job_id: str) -> list[dict[str, Any]]:
    return [event for page in source.event_pages(job_id) for event in page]


def metrics_of(source: JobSource, job_id: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in events_of(source, job_id) if e["type"] == "metrics"}


def expected_steps(emulator: Emulator, job_id: str) -> dict[int, dict[str, float]]:
    """The API's records merged per step: what the run's history must hold."""
    rows: dict[int, dict[str, float]] = {}
    for record in raw(emulator, f"/v1/fine-tunes/{job_id}/metrics")["metrics"]:
        values = {k: v for k, v in record.items() if k not in ("timestamp", "train/global_step")}
        rows.setdefault(record["train/global_step"], {}).update(values)
    return rows


@pytest.fixture
def finished(start_emulator: StartEmulator) -> Emulator:
    return start_emulator(
        [
            together(
                "ft-done",
                n_steps=12,
                n_epochs=3,
                created_offset=-2 * HOUR,
                with_validation_file=True,
                seed=42,
                suffix="prod",
                hyperparameters={"lora_r": 16, "lora_alpha": 32, "n_evals": 4, "warmup_ratio": 0.1},
            ),
            together("ft-dpo", n_steps=6, method="dpo", created_offset=-HOUR, integrations=NATIVE),
            together(
                "ft-bad",
                n_steps=10,
                created_offset=-3 * HOUR,
                outcome="failed",
                fail_at_step=4,
                error_message="CUDA out of memory",
            ),
            together("ft-stop", n_steps=10, created_offset=-4 * HOUR, outcome="cancelled"),
            together("ft-live", n_steps=10_000, created_offset=-30),
            together("ft-wait", n_steps=5, validate_seconds=10_000),
            JobScenario(id="ftjob-openai", created_offset=-HOUR),
        ]
    )


def test_jobs_come_as_the_job_model_newest_first(finished: Emulator) -> None:
    source = source_for(finished)
    jobs = [job for page in source.job_pages() for job in page]
    assert [j["id"] for j in jobs] == [
        "ft-wait",
        "ft-live",
        "ft-dpo",
        "ft-done",
        "ft-bad",
        "ft-stop",
    ]
    by_id = {j["id"]: j for j in jobs}
    assert {i: (j["status"], j["provider_status"]) for i, j in by_id.items()} == {
        "ft-wait": ("queued", "pending"),
        "ft-live": ("running", "running"),
        "ft-dpo": ("succeeded", "completed"),
        "ft-done": ("succeeded", "completed"),
        "ft-bad": ("failed", "error"),
        "ft-stop": ("cancelled", "cancelled"),
    }
    assert all(j["provider"] == "together" for j in jobs)
    assert by_id["ft-bad"]["error"]["message"] == "CUDA out of memory", "fetched once"
    before = finished.counts["together_retrieve"]
    list(source.job_pages())
    assert finished.counts["together_retrieve"] == before, "not again"

    done = source.get_job("ft-done")
    api = raw(finished, "/v1/fine-tunes/ft-done")
    assert done["model"] == LLAMA
    assert done["fine_tuned_model"] == api["model_output_name"]
    assert done["seed"] == 42
    assert done["suffix"] == "prod"
    assert done["created_at"] == int(finished.clock.start - 2 * HOUR)
    assert done["finished_at"] is not None and done["finished_at"] > done["created_at"]
    assert done["validation_file"] == api["validation_file"]
    assert done["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"train_on_inputs": "auto"}},
    }
    hyper = done["hyperparameters"]
    assert hyper["n_epochs"] == 3 and hyper["batch_size"] == 4
    assert hyper["learning_rate"] == 1e-5 and hyper["warmup_ratio"] == 0.1
    assert hyper["lr_scheduler"] == "linear" and hyper["min_lr_ratio"] == 0.0
    assert hyper["training_type"] == "Lora" and hyper["lora_r"] == 16 and hyper["lora_alpha"] == 32
    assert done["cost_usd"] == pytest.approx(api["total_price"] / 1e9)
    assert done["integrations"] is None
    assert done["raw"]["status"] == "completed" and "events" not in done["raw"]

    dpo = source.get_job("ft-dpo")
    assert dpo["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"dpo_beta": 0.1}}}
    assert dpo["seed"] is None, "no random_seed on the job"
    assert dpo["integrations"] == [
        {
            "type": "wandb",
            "wandb": {
                "project": "own",
                "entity": "me",
                "name": "my-run",
                "url": "https://wandb.ai/me/own/runs/ft-dpo",
            },
        }
    ]

    bad = source.get_job("ft-bad")
    assert bad["error"] == {"code": "error", "message": "CUDA out of memory", "param": None}
    assert bad["fine_tuned_model"] is None
    assert by_id["ft-live"]["finished_at"] is None


def test_the_openai_paths_do_not_show_together_jobs_nor_the_other_way(
    finished: Emulator,
) -> None:
    with pytest.raises(JobNotFound):
        source_for(finished).get_job("ftjob-openai")
    listed = raw(finished, "/v1/fine_tuning/jobs")["data"]
    assert [j["id"] for j in listed] == ["ftjob-openai"]


def test_a_cancel_is_watched_until_together_says_cancelled(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([together("ft-c", n_steps=1000, created_offset=-10)], time_scale=0)
    source = source_for(emulator)
    host = emulator.base_url.removesuffix("/v1")
    answer = httpx.post(
        f"{host}/v1/fine-tunes/ft-c/cancel", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert answer.json()["status"] == "cancel_requested"
    job = source.get_job("ft-c")
    assert (job["status"], job["provider_status"]) == ("running", "cancel_requested")
    emulator.advance(CANCEL_SECONDS + 0.1)
    job = source.get_job("ft-c")
    assert (job["status"], job["provider_status"]) == ("cancelled", "cancelled")
    kinds = [e["data"]["type"] for e in events_of(source, "ft-c") if e["type"] == "message"]
    assert kinds[:2] == ["job_stopped", "cancel_requested"], "newest first"


def test_metrics_merge_train_and_eval_records_of_a_step(finished: Emulator) -> None:
    source = source_for(finished)
    source.get_job("ft-done")
    metrics = metrics_of(source, "ft-done")
    expected = expected_steps(finished, "ft-done")
    assert sorted(metrics) == sorted(f"together-metrics-{s}" for s in expected)
    for step, values in expected.items():
        data = metrics[f"together-metrics-{step}"]["data"]
        assert data["step"] == step
        assert {k: v for k, v in data.items() if k not in ("step", "total_steps")} == values
        assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"} <= set(data)
    evals = sorted(s for s, v in expected.items() if "eval/loss" in v)
    assert evals == [3, 6, 9, 12]
    assert all(m["data"]["total_steps"] == 12 for m in metrics.values())


def test_metric_events_carry_the_records_nanosecond_time_in_seconds(finished: Emulator) -> None:
    source = source_for(finished)
    records = raw(finished, "/v1/fine-tunes/ft-done/metrics")["metrics"]
    assert all(r["timestamp"] > 10**18 for r in records), "nanoseconds"
    firsts: dict[int, int] = {}
    for record in records:
        firsts.setdefault(record["train/global_step"], record["timestamp"])
    source.get_job("ft-done")
    for event in metrics_of(source, "ft-done").values():
        assert event["created_at"] == firsts[event["data"]["step"]] // 10**9
    now = 1_779_196_193
    assert [record_seconds(now * s) for s in (10**9, 10**6, 10**3, 1)] == [now] * 4
    assert record_seconds(float(now) * 10**9) == now
    assert record_seconds("soon") is None and record_seconds(math.nan) is None


def test_events_are_messages_newest_first_with_stable_ids(finished: Emulator) -> None:
    source = source_for(finished)
    first = events_of(source, "ft-bad")
    messages = [e for e in first if e["type"] == "message"]
    assert messages[0]["data"]["type"] == "job_error"
    assert messages[0]["level"] == "error" and messages[0]["message"] == "CUDA out of memory"
    assert messages[-1]["data"]["type"] == "job_pending"
    times = [e["created_at"] for e in first]
    assert times == sorted(times, reverse=True)
    again = [e["id"] for e in events_of(source_for(finished), "ft-bad")]
    assert again == [e["id"] for e in first], "a new process gives the same ids"
    assert len(set(again)) == len(again)


def test_metrics_are_read_by_step_and_the_latest_step_waits_for_its_eval(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(
        [
            together(
                "ft-inc",
                n_steps=20,
                n_epochs=2,
                with_validation_file=True,
                hyperparameters={"n_evals": 10},
                created_offset=0,
            )
        ],
        time_scale=0,
    )
    source = source_for(emulator)
    source.get_job("ft-inc")
    seen: dict[str, dict[str, Any]] = {}

    def read() -> list[str]:
        found = metrics_of(source, "ft-inc")
        fresh = [i for i in found if i not in seen]
        for event_id in fresh:
            seen[event_id] = found[event_id]
        return sorted(fresh, key=lambda i: int(i.rsplit("-", 1)[1]))

    emulator.advance(2.1)  # steps 1 and 2 logged, step 2's eval not yet
    assert read() == ["together-metrics-1"], "step 2 waits: its eval may come"
    emulator.advance(0.3)  # step 2's eval logged
    assert read() == []
    emulator.advance(0.7)  # step 3's training record
    assert read() == ["together-metrics-2"]
    assert seen["together-metrics-2"]["data"]["eval/loss"] > 0
    emulator.advance(10)
    assert read() == [f"together-metrics-{s}" for s in range(3, 13)]
    emulator.advance(100)  # the job is over
    source.get_job("ft-inc")
    assert read() == [f"together-metrics-{s}" for s in range(13, 21)]
    assert read() == []

    restarted = source_for(emulator)
    restarted.get_job("ft-inc")
    assert metrics_of(restarted, "ft-inc") == seen, "read again from step 0: the same events"
    expected = expected_steps(emulator, "ft-inc")
    assert {e["data"]["step"]: e["data"] for e in seen.values()} == {
        s: {"step": s, "total_steps": 20, **v} for s, v in expected.items()
    }


def test_each_read_asks_only_from_the_highest_step_handed_on(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator([together("ft-q", n_steps=50, created_offset=0)], time_scale=0)
    asked: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/metrics"):
            asked.append(request.url.query.decode())

    source = source_for(emulator)
    source._api._client.event_hooks["request"] = [record]
    emulator.advance(10.5)
    events_of(source, "ft-q")
    emulator.advance(5)
    events_of(source, "ft-q")
    assert asked == ["", "global_step_from=9"]


def test_checkpoints_come_in_the_checkpoint_shape(finished: Emulator) -> None:
    source = source_for(finished)
    checkpoints = source.checkpoints("ft-done")
    model = source.get_job("ft-done")["fine_tuned_model"]
    assert [(c["id"], c["step_number"]) for c in checkpoints] == [
        ("ft-done", 12),
        ("ft-done:8", 8),
        ("ft-done:4", 4),
    ]
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == model
    assert checkpoints[1]["fine_tuned_model_checkpoint"].endswith("ft-done-step-8")
    assert all(isinstance(c["created_at"], int) for c in checkpoints)
    assert source.checkpoints("ft-live") == []


def test_a_refused_key_is_an_auth_error(finished: Emulator) -> None:
    source = source_for(finished, key="wrong-key-0000")
    with pytest.raises(SourceRejected, match="HTTP 401"):
        list(source.job_pages())


def test_an_unknown_job_is_not_found(finished: Emulator) -> None:
    source = source_for(finished)
    with pytest.raises(JobNotFound):
        source.get_job("ft-nope")
    with pytest.raises(JobNotFound):
        events_of(source, "ft-nope")
    with pytest.raises(JobNotFound, match="W&B run id"):
        source.get_job("ft-a/b")


def test_rate_limits_are_retryable_and_keep_retry_after(finished: Emulator) -> None:
    finished.set_faults(error_rate=1.0, status=429, retry_after=30)
    source = source_for(finished, retries=2)
    before = finished.request_count
    with pytest.raises(SourceUnavailable, match="HTTP 429") as caught:
        source.get_job("ft-done")
    assert caught.value.retry_after == 30
    assert finished.request_count - before == 1, "a long Retry-After is left to the daemon"


def test_server_errors_are_tried_again_a_bounded_number_of_times(finished: Emulator) -> None:
    finished.set_faults(error_rate=1.0, status=500, retry_after=0)
    source = source_for(finished, retries=2)
    before = finished.request_count
    with pytest.raises(SourceUnavailable, match="HTTP 500"):
        list(source.job_pages())
    assert finished.request_count - before == 3
    finished.set_faults(error_rate=0.5, status=503, retry_after=0)
    jobs = [j for page in source_for(finished, retries=8).job_pages() for j in page]
    assert len(jobs) == 6


def test_other_client_errors_and_a_dead_host_are_unavailable(finished: Emulator) -> None:
    finished.set_faults(error_rate=1.0, status=400)
    with pytest.raises(SourceUnavailable, match="HTTP 400"):
        source_for(finished).get_job("ft-done")
    finished.set_faults()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = TogetherSource.create(
        api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", timeout=1, max_retries=0
    )
    with pytest.raises(SourceUnavailable, match="could not connect"):
        dead.get_job("ft-done")
    finished.set_faults(latency=1.5)
    slow = TogetherSource.create(
        api_key=API_KEY, base_url=finished.base_url, timeout=0.5, max_retries=0
    )
    with pytest.raises(SourceUnavailable, match="timed out"):
        slow.get_job("ft-done")


@pytest.fixture
def canned() -> Iterator[tuple[CannedAPI, str]]:
    api = CannedAPI()
    with api.serve() as url:
        yield api, url


def test_an_unknown_status_is_watched_and_kept_as_provider_status(
    canned: tuple[CannedAPI, str],
) -> None:
    api, url = canned
    job = {"id": "ft-odd", "status": "Throttled", "created_at": "2026-05-01T10:00:00Z"}
    api.put("/v1/fine-tunes", {"data": [job, {"status": "running"}, {"id": "ft bad"}]})
    source = TogetherSource.create(api_key="k", base_url=url, timeout=5, max_retries=0)
    jobs = [j for page in source.job_pages() for j in page]
    assert [(j["id"], j["status"], j["provider_status"]) for j in jobs] == [
        ("ft-odd", "running", "Throttled")
    ]
    assert jobs[0]["created_at"] == 1_777_629_600
    assert "ft bad" in source.quarantined


def test_answers_that_are_not_the_api_are_unavailable(canned: tuple[CannedAPI, str]) -> None:
    api, url = canned
    source = TogetherSource.create(api_key="k", base_url=url + "/", timeout=5, max_retries=0)
    api.put("/v1/fine-tunes", b"<html>")
    with pytest.raises(SourceUnavailable, match="not JSON"):
        list(source.job_pages())
    api.put("/v1/fine-tunes", {"data": "all of them"})
    with pytest.raises(SourceUnavailable, match="no list"):
        list(source.job_pages())
    api.put("/v1/fine-tunes/ft-x", {"id": "ft-y", "status": "running"})
    with pytest.raises(SourceUnavailable, match="not this job"):
        source.get_job("ft-x")
    api.put("/v1/fine-tunes/ft-x/events", {"data": []})
    api.put("/v1/fine-tunes/ft-x/metrics", {"metrics": [{"train/global_step": "one"}, 7]})
    assert events_of(source, "ft-x") == []


# Pure parts, over generated input

_words = st.sampled_from(sorted(STATUSES)) | st.text(max_size=20)
_values = st.none() | st.integers() | st.floats() | st.text(max_size=10) | st.booleans()
_fields = st.fixed_dictionaries(
    {"id": st.just("ft-1"), "status": _words},
    optional={
        key: _values | st.dictionaries(st.text(max_size=8), _values, max_size=3)
        for key in (
            "model",
            "created_at",
            "updated_at",
            "model_output_name",
            "random_seed",
            "n_epochs",
            "learning_rate",
            "batch_size",
            "lr_scheduler",
            "training_type",
            "training_method",
            "total_price",
            "token_count",
            "wandb_project_name",
            "wandb_url",
            "events",
        )
    },
)


@given(_fields)
@settings(max_examples=300, deadline=None)
def test_any_job_object_maps_without_raising(fields: dict[str, Any]) -> None:
    job = to_job(fields)
    word = str(fields["status"] or "").strip()
    assert job["provider_status"] == word
    assert job["status"] in BRIDGE_STATUSES
    assert job["status"] == STATUSES.get(word.lower(), "running")
    assert job["seed"] is None or isinstance(job["seed"], int)
    assert job["method"]["type"]
    if job["status"] == "failed":
        assert job["error"]["code"] == word


@st.composite
def _logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records as Together logs them: per step a training record, sometimes an eval record
    right after it, sometimes (late) after the next step's training record."""
    records: list[dict[str, Any]] = []
    late: dict[str, Any] | None = None
    for step in range(1, draw(st.integers(1, 12)) + 1):
        records.append({"train/global_step": step, "train/loss": 1.0 / step, "timestamp": step})
        if late is not None:
            records.append(late)
            late = None
        kind = draw(st.sampled_from(["none", "eval", "late"]))
        evaluation = {"train/global_step": step, "eval/loss": 2.0 / step, "timestamp": step}
        if kind == "eval":
            records.append(evaluation)
        elif kind == "late":
            late = evaluation
    if late is not None:
        records.append(late)
    return records


@given(_logs(), st.lists(st.integers(0, 40), max_size=6))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reading_by_steps_gives_what_one_read_at_the_end_gives(
    records: list[dict[str, Any]], cuts: list[int]
) -> None:
    """Reads at any points in the log, each from the highest step handed on (as the API
    filters), then one once the job is over: every value once, the ids and values of one
    read of the whole log."""
    stored: dict[str, dict[str, Any]] = {}
    done = -1
    for cut in [*sorted(cuts), len(records)]:
        visible = [r for r in records[:cut] if r["train/global_step"] >= max(done, 0)]
        over = cut == len(records)
        events, done = metric_events("ft-1", visible, done_through=done, over=over)
        for event in events:
            stored.setdefault(event["id"], event)
    whole, _ = metric_events("ft-1", records, done_through=-1, over=True)
    assert stored == {e["id"]: e for e in whole}
    logged = sorted(
        (k, e["data"]["step"], v) for e in whole for k, v in e["data"].items() if k != "step"
    )
    given_values = sorted(
        (k, r["train/global_step"], v)
        for r in records
        for k, v in r.items()
        if k not in ("train/global_step", "timestamp")
    )
    assert logged == given_values


def test_a_together_source_table_builds_the_together_source() -> None:
    table = {"name": "tg", "kind": "together", "api_key_env": "TG_KEY"}
    config = SourceConfig.model_validate(table)
    source = make_source(config, Settings(), {"TG_KEY": "k"})
    assert isinstance(source, TogetherSource) and source.name == "tg"
    assert str(source._api._client.base_url) == "https://api.together.ai"
    with pytest.raises(ConfigError, match="TG_KEY"):
        make_source(config, Settings(), {})
