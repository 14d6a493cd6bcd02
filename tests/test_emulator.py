"""The OpenAI fine-tuning API emulator, driven through the real `openai` SDK over HTTP."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob
from pydantic import ValidationError

from bridge.emulator import Emulator, JobScenario, Scenario

KEY = "sk-emulator-test-key"
START = 1_760_000_000.0
LIFE = ["validating_files", "queued", "running", "paused", "running", "succeeded"]

MakeEmulator = Callable[..., Emulator]


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Start emulators (frozen clock by default) and stop them after the test."""
    started: list[Emulator] = []

    def make(*jobs: JobScenario, time_scale: float = 0.0, **kwargs: Any) -> Emulator:
        scenario = Scenario(seed=3, start_time=START, jobs=list(jobs), **kwargs)
        emulator = Emulator(scenario, api_key=KEY, time_scale=time_scale)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


def client_for(emulator: Emulator, **kwargs: Any) -> OpenAI:
    options: dict[str, Any] = {"api_key": KEY, "max_retries": 0, "timeout": 5.0} | kwargs
    return OpenAI(base_url=emulator.base_url, **options)


def raw(emulator: Emulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """An HTTP request without the SDK: (status, decoded JSON body)."""
    root = emulator.base_url.removesuffix("/v1")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(root + path, data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {KEY}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local emulator
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def finished(ago: float = 0, **fields: Any) -> JobScenario:
    """A job that finished well before the emulator started (created `ago` s before others)."""
    return JobScenario(created_offset=-10_000 - ago, **fields)


def metrics_events(client: OpenAI, job_id: str) -> list[Any]:
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    return [e for e in events if e.type == "metrics"]


# --- listing and paging ------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_across_pages(make_emulator: MakeEmulator) -> None:
    jobs = [finished(ago=100 * i) for i in range(25)]
    jobs += [JobScenario(created_offset=-5), JobScenario(created_offset=-5)]  # same second
    client = client_for(make_emulator(*jobs))

    first = client.fine_tuning.jobs.list(limit=10)
    assert len(first.data) == 10 and first.has_more
    second = client.fine_tuning.jobs.list(limit=10, after=first.data[-1].id)
    last = client.fine_tuning.jobs.list(limit=10, after=second.data[-1].id)
    assert len(last.data) == 7 and last.has_more is False

    walked = [*first.data, *second.data, *last.data]
    assert len({j.id for j in walked}) == 27
    keys = [j.created_at for j in walked]
    assert keys == sorted(keys, reverse=True)
    # equal created_at: the later-created job comes first
    assert walked[0].created_at == walked[1].created_at
    assert walked[0].id == client.fine_tuning.jobs.list(limit=1).data[0].id


def test_iterating_a_page_follows_the_cursor(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(*[finished(ago=100 * i) for i in range(23)])
    client = client_for(emulator)
    ids = [job.id for job in client.fine_tuning.jobs.list(limit=5)]
    assert len(ids) == len(set(ids)) == 23
    pages = list(client.fine_tuning.jobs.list(limit=5).iter_pages())
    assert [len(p.data) for p in pages] == [5, 5, 5, 5, 3]
    assert emulator.counts["list_jobs"] == 10


def test_default_page_sizes(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(*[finished(ago=100 * i, n_epochs=5) for i in range(25)])
    client = client_for(emulator)
    page = client.fine_tuning.jobs.list()
    assert len(page.data) == 20 and page.has_more
    job_id = page.data[0].id
    assert len(client.fine_tuning.jobs.list_events(job_id).data) == 20
    assert len(client.fine_tuning.jobs.checkpoints.list(job_id).data) == 3


def test_metadata_filter(make_emulator: MakeEmulator) -> None:
    client = client_for(
        make_emulator(
            finished(metadata={"team": "search", "env": "prod"}),
            finished(metadata={"team": "search", "env": "dev"}),
            finished(metadata={"team": "ads"}),
            finished(),
        )
    )
    assert len(client.fine_tuning.jobs.list(metadata={"team": "search"}).data) == 2
    prod = client.fine_tuning.jobs.list(metadata={"team": "search", "env": "prod"}).data
    assert [j.metadata for j in prod] == [{"team": "search", "env": "prod"}]
    assert client.fine_tuning.jobs.list(metadata={"team": "nobody"}).data == []
    assert len(client.fine_tuning.jobs.list().data) == 4
    only_null = client.fine_tuning.jobs.list(extra_query={"metadata": "null"}).data
    assert [j.metadata for j in only_null] == [None]


def test_events_of_a_finished_job(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished(n_steps=47, n_epochs=3, with_validation_file=True))
    client = client_for(emulator)
    job_id = client.fine_tuning.jobs.list().data[0].id

    first = client.fine_tuning.jobs.list_events(job_id)
    assert len(first.data) == 20 and first.has_more
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=7))
    assert len({e.id for e in events}) == len(events)
    assert all(e.id.startswith("ftevent-") and e.object == "fine_tuning.job.event" for e in events)
    stamps = [e.created_at for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert len(set(stamps)) < len(stamps)  # many events share a second

    steps = [e.data["step"] for e in events if e.type == "metrics"]  # type: ignore[index]
    assert sorted(steps) == list(range(1, 48))
    assert steps == sorted(steps, reverse=True)
    messages = [e.message for e in reversed(events)]
    assert messages[0].startswith("Validating training file: file-")
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    assert messages[-1] == "The job has successfully completed"
    assert any(
        m.startswith("Checkpoint created at step 47 with Snapshot ID: ft:") for m in messages
    )


def test_supervised_metrics_with_validation(make_emulator: MakeEmulator) -> None:
    client = client_for(make_emulator(finished(n_steps=30, n_epochs=3, with_validation_file=True)))
    job = client.fine_tuning.jobs.list().data[0]
    assert job.validation_file and job.validation_file.startswith("file-")
    data = {e.data["step"]: e.data for e in metrics_events(client, job.id)}
    assert set(data[5]) == {
        "step",
        "total_steps",
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    }
    assert "full_valid_loss" in data[10] and "full_valid_mean_token_accuracy" in data[30]
    assert data[30]["train_loss"] < data[1]["train_loss"]  # the loss goes down


def test_events_appear_only_once_their_time_has_passed(make_emulator: MakeEmulator) -> None:
    job = JobScenario(validate_seconds=2, queue_seconds=3, n_steps=10, step_seconds=1)
    emulator = make_emulator(job)
    client = client_for(emulator)
    job_id = client.fine_tuning.jobs.list().data[0].id
    assert [e.message for e in client.fine_tuning.jobs.list_events(job_id)] == [
        f"Validating training file: {client.fine_tuning.jobs.retrieve(job_id).training_file}"
    ]
    emulator.advance(5 + 4)
    assert [e.data["step"] for e in metrics_events(client, job_id)] == [4, 3, 2, 1]
    emulator.advance(0.5)
    assert len(metrics_events(client, job_id)) == 4


def test_jobs_created_later_are_hidden_until_then(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(JobScenario(created_offset=60))
    client = client_for(emulator)
    assert client.fine_tuning.jobs.list().data == []
    emulator.advance(61)
    assert len(client.fine_tuning.jobs.list().data) == 1


# --- job lifecycle -------------------------------------------------------------------------------


def test_status_progresses_in_real_time(make_emulator: MakeEmulator) -> None:
    job = JobScenario(
        validate_seconds=2,
        queue_seconds=2,
        n_steps=10,
        n_epochs=2,
        step_seconds=1,
        pause_at_step=5,
        pause_seconds=4,
    )
    emulator = make_emulator(time_scale=25.0)
    client = client_for(emulator)
    assert client.fine_tuning.jobs.list().data == []  # the client is warm before the job starts
    job_id = emulator.add_job(job)
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "succeeded":
            break
        time.sleep(0.01)
    assert seen == LIFE
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed" in messages


def test_finished_job_fields(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished(suffix="bot", n_steps=20, n_epochs=2))
    job = client_for(emulator).fine_tuning.jobs.list().data[0]
    assert job.status == "succeeded" and job.object == "fine_tuning.job"
    assert job.id.startswith("ftjob-") and len(job.id) == 30
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(
        "ft:gpt-4o-mini-2024-07-18:emulator:bot:"
    )
    assert job.finished_at and job.finished_at > job.created_at
    assert job.trained_tokens and job.result_files[0].startswith("file-")
    assert job.organization_id == "org-emulator0000000000000000"
    assert job.estimated_finish is None
    extra = job.model_extra or {}
    assert extra["user_provided_suffix"] == "bot"
    assert {"usage_metrics", "shared_with_openai", "eval_id"} <= set(extra)
    # not failed, yet the error object is there with null fields: truthy
    assert job.error is not None and job.error.code is None and job.error.message is None


def test_hyperparameters_turn_from_auto_to_numbers(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(
        JobScenario(method="dpo", n_epochs=2, hyperparameters={"beta": 0.25}),
        JobScenario(method="reinforcement", n_steps=20, n_epochs=1),
    )
    client = client_for(emulator)
    dpo, rft = sorted(client.fine_tuning.jobs.list().data, key=lambda j: j.method.type)  # type: ignore[union-attr]
    assert dpo.hyperparameters.n_epochs == "auto"
    assert dpo.method and dpo.method.dpo and dpo.method.dpo.hyperparameters
    assert dpo.method.dpo.hyperparameters.beta == 0.25  # chosen by the user: never "auto"
    assert dpo.method.dpo.hyperparameters.batch_size == "auto"

    emulator.advance(5)
    dpo = client.fine_tuning.jobs.retrieve(dpo.id)
    assert dpo.status == "running"
    assert dpo.hyperparameters.n_epochs == 2 and dpo.hyperparameters.batch_size == 4
    assert dpo.method and dpo.method.dpo and dpo.method.dpo.hyperparameters
    assert dpo.method.dpo.hyperparameters.learning_rate_multiplier == 1.8
    rft = client.fine_tuning.jobs.retrieve(rft.id)
    assert rft.method and rft.method.reinforcement and rft.method.reinforcement.hyperparameters
    hp = rft.method.reinforcement.hyperparameters
    assert hp.compute_multiplier == 1.0 and hp.eval_interval == 2 and hp.eval_samples == 1
    assert hp.reasoning_effort == "medium"
    assert rft.estimated_finish is not None and rft.estimated_finish > emulator.now()


def test_failed_job(make_emulator: MakeEmulator) -> None:
    client = client_for(
        make_emulator(
            finished(outcome="failed", fail_at_step=7, n_steps=20, n_epochs=2),
            finished(ago=10, outcome="failed", fail_at_step=0, error_code="invalid_n_examples"),
        )
    )
    at_step, in_validation = client.fine_tuning.jobs.list().data
    assert at_step.status == "failed" and at_step.error and at_step.error.code == "server_error"
    assert at_step.error.message and at_step.error.param is None
    assert at_step.fine_tuned_model is None and at_step.result_files == []
    assert at_step.finished_at is not None
    assert len(metrics_events(client, at_step.id)) == 7
    last = client.fine_tuning.jobs.list_events(at_step.id, limit=1).data[0]
    assert last.level == "error" and last.message.startswith("The job failed due to")

    assert in_validation.error and in_validation.error.code == "invalid_n_examples"
    assert in_validation.error.param == "training_file"
    assert in_validation.hyperparameters.n_epochs == "auto"


def test_scripted_cancel(make_emulator: MakeEmulator) -> None:
    client = client_for(make_emulator(finished(outcome="cancelled", cancel_at_step=4)))
    job = client.fine_tuning.jobs.list().data[0]
    assert job.status == "cancelled" and job.finished_at is not None
    assert client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message == "Job cancelled"


def test_checkpoints_keep_the_last_three_epochs(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(JobScenario(n_steps=50, n_epochs=5, suffix="ck"))
    client = client_for(emulator)
    job_id = client.fine_tuning.jobs.list().data[0].id
    emulator.advance(4 + 20)
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)] == [20, 10]
    emulator.advance(100)
    page = client.fine_tuning.jobs.checkpoints.list(job_id)
    assert [c.step_number for c in page.data] == [50, 40, 30]
    extra = page.model_extra or {}
    assert extra["first_id"] == page.data[0].id and extra["last_id"] == page.data[-1].id
    newest = page.data[0]
    assert newest.id.startswith("ftckpt_") and newest.fine_tuning_job_id == job_id
    assert newest.fine_tuned_model_checkpoint.startswith("ft:gpt-4o-mini-2024-07-18:emulator:ck:")
    assert newest.fine_tuned_model_checkpoint.endswith(":ckpt-step-50")
    assert newest.metrics.step == 50 and newest.metrics.train_loss is not None
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=2)] == [
        50,
        40,
        30,
    ]


def test_result_file_plain_and_base64(make_emulator: MakeEmulator) -> None:
    client = client_for(
        make_emulator(
            finished(n_steps=12, n_epochs=2, with_validation_file=True),
            finished(n_steps=12, n_epochs=2, result_csv_base64=True),
        )
    )
    plain_job, encoded_job = client.fine_tuning.jobs.list().data[::-1]
    plain = client.files.content(plain_job.result_files[0]).text
    lines = plain.splitlines()
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(lines) == 13 and lines[1].startswith("1,")
    assert all(cell for cell in lines[5].split(","))  # validation columns filled

    encoded = client.files.content(encoded_job.result_files[0]).content
    assert not encoded.startswith(b"step,")
    decoded = base64.b64decode(encoded).decode().splitlines()
    assert decoded[0] == lines[0] and decoded[1].endswith(",,")  # no validation file

    info = client.files.retrieve(plain_job.result_files[0])
    assert info.purpose == "fine-tune-results" and info.bytes == len(plain.encode())
    assert client.files.retrieve(plain_job.training_file).purpose == "fine-tune"


def test_result_file_exists_only_once_succeeded(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished(), JobScenario(n_steps=10, n_epochs=1))
    client = client_for(emulator)
    running = client.fine_tuning.jobs.list().data[0]
    assert running.result_files == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-doesnotexist")


def test_pause_resume_cancel(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(JobScenario(n_steps=20, n_epochs=2))
    client = client_for(emulator)
    jobs = client.fine_tuning.jobs
    job_id = jobs.list().data[0].id
    with pytest.raises(openai.ConflictError):
        jobs.pause(job_id)  # still validating
    emulator.advance(4 + 5.5)
    assert str(jobs.pause(job_id).status) == "paused"
    emulator.advance(100)
    assert str(jobs.retrieve(job_id).status) == "paused"
    assert len(metrics_events(client, job_id)) == 5
    assert jobs.resume(job_id).status == "running"
    emulator.advance(3)
    assert len(metrics_events(client, job_id)) == 8  # 5.5 + 3 s of training
    assert jobs.cancel(job_id).status == "cancelled"
    emulator.advance(100)
    job = jobs.retrieve(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert len(metrics_events(client, job_id)) == 8
    messages = [e.message for e in jobs.list_events(job_id, limit=100)]
    assert messages[:1] == ["Job cancelled"]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed" in messages
    with pytest.raises(openai.ConflictError):
        jobs.cancel(job_id)
    with pytest.raises(openai.ConflictError):
        jobs.resume(job_id)


def test_create_job_through_the_sdk(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished())
    client = client_for(emulator)
    created = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file="file-train123",
        validation_file="file-valid123",
        suffix="made-here",
        seed=42,
        metadata={"source": "test"},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3, "n_epochs": 2}}},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["t"]}}],
    )
    assert isinstance(created, FineTuningJob)
    assert created.status == "validating_files" and created.seed == 42
    assert created.training_file == "file-train123" and created.validation_file == "file-valid123"
    assert created.method and created.method.dpo and created.method.dpo.hyperparameters
    assert created.method.dpo.hyperparameters.beta == 0.3
    assert created.hyperparameters.n_epochs == 2 and created.hyperparameters.batch_size == "auto"
    assert created.integrations and created.integrations[0].wandb.project == "p"
    assert (created.integrations[0].wandb.model_extra or {})["run_id"] == created.id
    assert client.fine_tuning.jobs.list(limit=1).data[0].id == created.id
    emulator.advance(100)
    assert client.fine_tuning.jobs.retrieve(created.id).status == "succeeded"

    with pytest.raises(openai.BadRequestError) as error:
        client.post("/fine_tuning/jobs", body={"model": "m"}, cast_to=object)
    assert error.value.param == "training_file"


# --- errors and faults ----------------------------------------------------------------------------


def test_wrong_key_is_rejected(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished())
    with pytest.raises(openai.AuthenticationError) as error:
        client_for(emulator, api_key="sk-wrong-key-0000").fine_tuning.jobs.list()
    assert error.value.code == "invalid_api_key"
    assert KEY not in str(error.value) and "sk-wrong-key-0000" not in str(error.value)


def test_any_key_is_accepted_without_api_key() -> None:
    with Emulator(Scenario(jobs=[finished()])) as emulator:
        client = OpenAI(base_url=emulator.base_url, api_key="anything", max_retries=0)
        assert len(client.fine_tuning.jobs.list().data) == 1


def test_not_found_and_bad_params(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished())
    client = client_for(emulator)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.get("/no/such/route", cast_to=object)
    status, body = raw(emulator, "GET", "/v1/fine_tuning/jobs?limit=many")
    assert status == 400
    assert body["error"]["param"] == "limit" and body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert raw(emulator, "GET", "/v1/fine_tuning/jobs?limit=101")[0] == 400
    assert raw(emulator, "GET", "/v1/fine_tuning/jobs?after=ftjob-nope")[0] == 400


def test_faults_surface_after_the_sdk_retries(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished())
    emulator.set_faults(error_rate=1.0, status=500, retry_after=0.01)
    client = client_for(emulator, max_retries=2)
    with pytest.raises(openai.InternalServerError):
        client.fine_tuning.jobs.list()
    assert emulator.counts["list_jobs"] == 3 and emulator.request_count == 3

    emulator.set_faults(error_rate=1.0, status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as error:
        client_for(emulator).fine_tuning.jobs.list()
    assert error.value.response.headers["retry-after"] == "7"

    emulator.set_faults(down=True)
    with pytest.raises(openai.InternalServerError) as down:
        client_for(emulator).fine_tuning.jobs.retrieve("ftjob-any")
    assert down.value.status_code == 503

    emulator.set_faults(error_rate=0.5)
    client = client_for(emulator)
    outcomes = []
    for _ in range(40):
        try:
            client.fine_tuning.jobs.list()
            outcomes.append(True)
        except openai.InternalServerError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35

    emulator.set_faults(latency=0.05)
    began = time.monotonic()
    client.fine_tuning.jobs.list()
    assert time.monotonic() - began >= 0.05


def test_control_api(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()
    status, body = raw(emulator, "POST", "/_emulator/jobs", {"suffix": "ctl", "n_steps": 5})
    assert status == 200 and body["id"].startswith("ftjob-")
    assert raw(emulator, "POST", "/_emulator/jobs", {"n_stesp": 5})[0] == 400
    client = client_for(emulator)
    assert (client.fine_tuning.jobs.retrieve(body["id"]).model_extra or {})["suffix"] == "ctl"
    assert raw(emulator, "POST", "/_emulator/faults", {"down": True})[0] == 200
    with pytest.raises(openai.InternalServerError):
        client.fine_tuning.jobs.list()
    status, stats = raw(emulator, "GET", "/_emulator/stats")
    assert stats["counts"] == {"retrieve": 1, "list_jobs": 1} and stats["request_count"] == 2
    raw(emulator, "POST", "/_emulator/faults", {})
    raw(emulator, "POST", "/_emulator/advance", {"seconds": 100})
    assert client.fine_tuning.jobs.retrieve(body["id"]).status == "succeeded"


def test_add_job_at_runtime(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(finished())
    emulator.advance(50)
    job_id = emulator.add_job(JobScenario(suffix="late"))
    job = client_for(emulator).fine_tuning.jobs.list().data[0]
    assert job.id == job_id and job.created_at == int(START + 50)


# --- variants ------------------------------------------------------------------------------------


def test_azure_mode(make_emulator: MakeEmulator) -> None:
    client = client_for(make_emulator(finished(azure=True, n_steps=10, n_epochs=1)))
    job = client.fine_tuning.jobs.list().data[0]
    assert job.organization_id is None
    assert len(job.id) == len("ftjob-") + 32
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e.data for e in events if e.type == "metrics"]
    assert len(metrics) == 10 and all("total_steps" not in d for d in metrics)
    messages = {e.message for e in events}
    assert {"Job enqueued. Waiting for jobs ahead to complete.", "Job succeeded."} <= messages


def test_reinforcement_metrics_are_nested(make_emulator: MakeEmulator) -> None:
    job = finished(
        method="reinforcement",
        n_steps=10,
        n_epochs=1,
        with_validation_file=True,
        hyperparameters={"eval_interval": 5},
    )
    client = client_for(make_emulator(job))
    ft_job = client.fine_tuning.jobs.list().data[0]
    data = {e.data["step"]: e.data for e in metrics_events(client, ft_job.id)}
    assert sorted(data) == list(range(1, 11))
    scores = data[5]["scores"]
    assert [g["name"] for g in scores["graders"]] == ["exact_match", "format_check"]
    assert {"name", "type", "train_reward_mean", "valid_reward_mean"} == set(scores["graders"][0])
    assert isinstance(scores["valid_reward_mean"], float)
    assert data[4]["scores"]["valid_reward_mean"] is None  # evaluated every 5 steps
    assert {"usage", "errors", "timing", "train_reward_mean"} <= set(data[5])
    assert ft_job.method and ft_job.method.type == "reinforcement"


def test_dpo_metrics(make_emulator: MakeEmulator) -> None:
    client = client_for(make_emulator(finished(method="dpo", n_steps=10, n_epochs=1)))
    job_id = client.fine_tuning.jobs.list().data[0].id
    data = metrics_events(client, job_id)[0].data
    assert isinstance(data, dict)
    assert {"train_dpo_margin", "train_chosen_logprob", "train_rejected_logprob"} <= set(data)


def test_same_scenario_same_ids_and_values(make_emulator: MakeEmulator) -> None:
    jobs = [finished(n_steps=15, n_epochs=3), finished(method="dpo", n_steps=10, n_epochs=2)]

    def snapshot(emulator: Emulator) -> list[Any]:
        client = client_for(emulator)
        return [
            (
                job.model_dump(),
                [e.model_dump() for e in client.fine_tuning.jobs.list_events(job.id)],
            )
            for job in client.fine_tuning.jobs.list()
        ]

    assert snapshot(make_emulator(*jobs)) == snapshot(make_emulator(*jobs))


# --- scenarios and the command line ------------------------------------------------------------


def test_scenario_typo_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"jobs": [{"n_stpes": 10}]}))
    with pytest.raises(ValidationError, match="n_stpes"):
        Scenario.load(path)
    with pytest.raises(ValidationError, match="fail_at_step"):
        JobScenario(fail_at_step=3)  # outcome is "succeeded"


def test_scenario_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text('seed = 9\n[[jobs]]\nmethod = "dpo"\nn_steps = 12\n')
    scenario = Scenario.load(path)
    assert scenario.seed == 9 and scenario.jobs[0].method == "dpo"


def test_demo_scenario_covers_the_cases() -> None:
    jobs = Scenario.demo().jobs
    assert {j.method for j in jobs} == {"supervised", "dpo", "reinforcement"}
    assert {j.outcome for j in jobs} >= {"succeeded", "failed"}
    assert any(j.created_offset < -1000 for j in jobs) and any(j.with_validation_file for j in jobs)


def test_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.emulator", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:") and line.endswith("/v1")
        client = OpenAI(base_url=line.removeprefix("listening on "), api_key=KEY, max_retries=0)
        assert len(client.fine_tuning.jobs.list(limit=100).data) >= 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
