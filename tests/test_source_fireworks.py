"""The Fireworks AI source against the emulator's Fireworks API (real HTTP), and its pure
parts (run ids, the job model) over generated input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bridge import limits
from bridge.emulator import Emulator, JobScenario
from bridge.emulator.fireworks import URL_TTL
from bridge.engine import Bridge
from bridge.errors import ConfigError, JobNotFound, SourceRejected, SourceUnavailable
from bridge.mapping import WandbDefaults
from bridge.memory import MemorySink
from bridge.settings import Settings
from bridge.sources import make_source, source_configs
from bridge.sources.fireworks import (
    FAMILIES,
    STATUS_TABLE,
    FireworksSource,
    curve_events,
    job_model,
    metric_events,
    resource_of,
    run_id_of,
)
from bridge.sources.model import STATUSES
from bridge.store import SqlStore
from tests.conftest import API_KEY

StartEmulator = Callable[..., Emulator]
MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
EARLY = "JOB_STATE_EARLY_STOPPED"
NATIVE = [{"type": "wandb", "wandb": {"project": "fw-own", "entity": "team"}}]


def fw(**fields: Any) -> JobScenario:
    """A Fireworks job that starts training at once."""
    defaults: dict[str, Any] = {
        "provider": "fireworks",
        "model": MODEL,
        "validate_seconds": 0,
        "queue_seconds": 0,
        "finalize_seconds": 1,
        "n_epochs": 1,
    }
    return JobScenario(**(defaults | fields))


def source_of(emulator: Emulator, *, key: str = API_KEY, retries: int = 0) -> FireworksSource:
    return FireworksSource(
        api_key=key,
        account_id="emulator",
        base_url=emulator.base_url,
        timeout=5,
        max_retries=retries,
    )


def all_jobs(source: FireworksSource) -> list[dict[str, Any]]:
    return [job for page in source.job_pages() for job in page]


def events(source: FireworksSource, run_id: str) -> list[dict[str, Any]]:
    return [event for page in source.event_pages(run_id) for event in page]


def api(emulator: Emulator) -> httpx.Client:
    root = emulator.base_url.removesuffix("/v1")
    return httpx.Client(base_url=root, headers={"Authorization": f"Bearer {API_KEY}"})


def file_lines(emulator: Emulator, name: str) -> list[dict[str, Any]]:
    """The metrics file as the API gives it, read without the source."""
    with api(emulator) as client:
        url = client.get(f"/v1/{name}").json()["metricsFileSignedUrl"]
    return [json.loads(line) for line in httpx.get(url).text.splitlines()]


# Listing


def test_lists_the_three_families_newest_first_across_pages(
    start_emulator: StartEmulator,
) -> None:
    jobs = [fw(n_steps=1, created_offset=-10_000 - 7 * i) for i in range(60)]
    jobs += [fw(method="dpo", n_steps=1, created_offset=-10_003 - 7 * i) for i in range(55)]
    jobs += [fw(method="reinforcement", n_steps=1, created_offset=-5 - i) for i in range(3)]
    emulator = start_emulator(jobs, time_scale=0)
    source = source_of(emulator)
    listed = all_jobs(source)
    ids = [job["id"] for job in listed]
    assert len(ids) == len(set(ids)) == 118
    assert {i.split(".")[0] for i in ids} == {"fw-sft", "fw-dpo", "fw-rft"}
    created = [job["created_at"] for job in listed]
    assert created == sorted(created, reverse=True), "one newest-first stream"
    assert all(job["provider"] == "fireworks" for job in listed)
    assert emulator.counts["fw_list"] == 2 + 2 + 1, "pages of 50 per collection"

    before = emulator.counts["fw_list"]
    first = next(iter(source.job_pages()))
    assert len(first) == 50 and emulator.counts["fw_list"] - before == 3, "lazy: one each"


# Statuses and fields


def test_job_fields_to_the_model(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(
        [
            fw(id="done", n_steps=4, created_offset=-3600, with_validation_file=True),
            fw(id="dpo1", method="dpo", n_steps=4, created_offset=-3600),
            fw(id="rft1", method="reinforcement", n_steps=4, created_offset=-3600),
            fw(id="own", n_steps=4, integrations=NATIVE, created_offset=-3600),
        ],
        time_scale=0,
    )
    source = source_of(emulator)
    jobs = {job["id"]: job for job in all_jobs(source)}
    done = jobs["fw-sft.emulator.done"]
    assert done["status"] == "succeeded" and done["provider_status"] == "JOB_STATE_COMPLETED"
    assert done["model"] == MODEL
    assert done["fine_tuned_model"] == "accounts/emulator/models/done"
    assert done["method"]["type"] == "supervised"
    assert done["hyperparameters"]["epochs"] == 1
    assert done["hyperparameters"]["learningRate"] == pytest.approx(1e-4)
    assert done["training_file"].startswith("accounts/emulator/datasets/")
    assert done["validation_file"].startswith("accounts/emulator/datasets/")
    assert done["created_at"] < done["finished_at"]
    assert done["cost_usd"] == pytest.approx(3.25)
    assert done["integrations"] is None
    assert done["raw"]["name"] == "accounts/emulator/supervisedFineTuningJobs/done"
    assert "metricsFileSignedUrl" not in done["raw"], "a signed URL is a credential"

    dpo = jobs["fw-dpo.emulator.dpo1"]
    assert dpo["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"klBeta": 0.1, "lossMethod": "DPO"}},
    }
    assert dpo["hyperparameters"]["loraRank"] == 8 and dpo["model"] == MODEL
    assert dpo["fine_tuned_model"] == "accounts/emulator/models/dpo1"

    rft = jobs["fw-rft.emulator.rft1"]
    assert rft["method"]["type"] == "reinforcement"
    assert rft["method"]["reinforcement"]["evaluator"].startswith("accounts/emulator/evaluators/")
    assert "outputMetrics" not in rft["raw"], "the curves become events"

    own = jobs["fw-sft.emulator.own"]
    assert own["integrations"] == [
        {
            "type": "wandb",
            "wandb": {
                "project": "fw-own",
                "entity": "team",
                "name": "own",
                "run_id": "own",
                "url": None,
            },
        }
    ]
    assert "wandb-secret-key-of-the-job" not in json.dumps(jobs), "the job's W&B key stays out"
    assert source.get_job("fw-sft.emulator.done") == done
    assert source.get_job("accounts/emulator/supervisedFineTuningJobs/done") == done


@pytest.mark.parametrize(
    ("scenario", "status", "word"),
    [
        (fw(validate_seconds=100), "validating_files", "JOB_STATE_VALIDATING"),
        (fw(queue_seconds=100), "queued", "JOB_STATE_PENDING"),
        (fw(n_steps=10, step_seconds=100), "running", "JOB_STATE_RUNNING"),
        (
            fw(n_steps=2, step_seconds=1, finalize_seconds=100),
            "running",
            "JOB_STATE_WRITING_RESULTS",
        ),
        (
            fw(n_steps=10, step_seconds=1, pause_at_step=1, pause_seconds=100),
            "paused",
            "JOB_STATE_PAUSED",
        ),
        (fw(n_steps=4, metadata={"fireworks_final_state": EARLY}), "succeeded", EARLY),
        (fw(n_steps=4, outcome="cancelled", cancel_at_step=2), "cancelled", "JOB_STATE_CANCELLED"),
        (
            fw(n_steps=4, outcome="failed", fail_at_step=2, error_message="bad rows"),
            "failed",
            "JOB_STATE_FAILED",
        ),
    ],
    ids=["validating", "pending", "running", "writing", "paused", "early", "cancelled", "failed"],
)
def test_states_to_statuses(
    start_emulator: StartEmulator, scenario: JobScenario, status: str, word: str
) -> None:
    emulator = start_emulator([scenario], time_scale=0)
    emulator.advance(10)
    (job,) = all_jobs(source_of(emulator))
    assert (job["status"], job["provider_status"]) == (status, word)
    assert job["raw"].get("early_stopped", False) is (word == "JOB_STATE_EARLY_STOPPED")
    if status == "failed":
        assert job["error"] == {"code": "INTERNAL", "message": "bad rows", "param": None}
    else:
        assert job["error"] is None
    assert (job["fine_tuned_model"] is not None) is (status == "succeeded")


def test_an_unknown_state_is_kept_and_watched_as_running(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(
        [fw(n_steps=10, step_seconds=100, metadata={"fireworks_state": "JOB_STATE_WARMING_UP"})],
        time_scale=0,
    )
    emulator.advance(1)
    source = source_of(emulator)
    with capture_logs() as logs:
        (job,) = all_jobs(source)
        all_jobs(source)
    assert (job["status"], job["provider_status"]) == ("running", "JOB_STATE_WARMING_UP")
    said = [e for e in logs if e["event"] == "source.unknown_status"]
    assert len(said) == 1 and said[0]["status"] == "JOB_STATE_WARMING_UP"


def test_a_job_being_deleted_is_gone(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(
        [
            fw(
                id="bye",
                n_steps=10,
                step_seconds=100,
                metadata={"fireworks_state": "JOB_STATE_DELETING"},
            )
        ],
        time_scale=0,
    )
    emulator.advance(1)
    source = source_of(emulator)
    assert all_jobs(source) == []
    with pytest.raises(JobNotFound):
        source.get_job("fw-sft.emulator.bye")


# The job model over generated input

RESOURCE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "state": st.one_of(
            st.sampled_from([k.upper() for k in STATUS_TABLE]), st.text(max_size=30), st.none()
        ),
        "createTime": st.one_of(
            st.just("2026-05-01T12:00:00.123456789Z"), st.text(max_size=20), st.integers()
        ),
        "completedTime": st.one_of(st.just("2026-05-01T13:00:00Z"), st.none()),
        "status": st.one_of(
            st.fixed_dictionaries({"code": st.just("INTERNAL"), "message": st.text(max_size=20)}),
            st.none(),
            st.integers(),
        ),
        "baseModel": st.one_of(st.just(MODEL), st.none(), st.integers()),
        "trainingConfig": st.one_of(
            st.fixed_dictionaries({"baseModel": st.just(MODEL), "epochs": st.integers(1, 9)}),
            st.none(),
            st.text(max_size=5),
        ),
        "lossConfig": st.one_of(st.fixed_dictionaries({"klBeta": st.floats(0, 1)}), st.none()),
        "wandbConfig": st.one_of(
            st.fixed_dictionaries({"enabled": st.booleans(), "apiKey": st.just("secret")}),
            st.none(),
        ),
        "estimatedCost": st.one_of(
            st.fixed_dictionaries({"currencyCode": st.just("USD"), "units": st.text(max_size=4)}),
            st.none(),
        ),
        "outputModel": st.one_of(st.text(max_size=10), st.none()),
        "outputMetrics": st.one_of(st.text(max_size=30), st.none()),
    },
)


@settings(max_examples=200, deadline=None)
@given(fields=RESOURCE_FIELDS, collection=st.sampled_from(sorted(FAMILIES)))
def test_any_resource_gives_a_valid_job(fields: dict[str, Any], collection: str) -> None:
    job = job_model({"name": f"accounts/acme/{collection}/job-1", **fields})
    assert job["id"] == f"fw-{FAMILIES[collection][0]}.acme.job-1"
    assert job["status"] in STATUSES
    state = fields.get("state")
    assert job["provider_status"] == (
        state if isinstance(state, str) and state else "JOB_STATE_UNSPECIFIED"
    )
    if isinstance(state, str) and state.lower() in STATUS_TABLE:
        assert job["status"] == STATUS_TABLE[state.lower()]
    assert (job["error"] is not None) is (job["status"] == "failed")
    assert (job["fine_tuned_model"] is not None) is (job["status"] == "succeeded")
    # The job's own W&B key is left out (checked by place: generated text, a status message
    # say, may happen to read "secret").
    wandb_config = job["raw"].get("wandbConfig")
    assert not isinstance(wandb_config, dict) or "apiKey" not in wandb_config
    assert job["created_at"] is None or isinstance(job["created_at"], int)
    json.dumps(job)  # plain JSON


# Run ids

PART = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    account=PART,
    job=PART,
    collection=st.sampled_from(sorted(FAMILIES)),
    other=st.tuples(PART, PART, st.sampled_from(sorted(FAMILIES))),
)
def test_run_ids_are_stable_valid_unique_and_reversible(
    account: str, job: str, collection: str, other: tuple[str, str, str]
) -> None:
    name = f"accounts/{account}/{collection}/{job}"
    run_id = run_id_of(name)
    assert run_id == run_id_of(name), "stable"
    assert limits.run_id_problem(run_id) is None, "valid for W&B"
    assert resource_of(run_id) == (account, collection, job), "reversible"
    assert resource_of(name) == (account, collection, job)
    other_name = f"accounts/{other[0]}/{other[2]}/{other[1]}"
    assert (run_id_of(other_name) == run_id) is (other_name == name), "unique"


@pytest.mark.parametrize(
    "name",
    [
        "accounts/a.b/dpoJobs/x",
        "accounts/a/dpoJobs/x.y",
        "accounts/a/dpoJobs/x/y",
        "accounts/a/models/x",
        "projects/a/dpoJobs/x",
        "accounts/a/dpoJobs/" + "x" * 130,
        "accounts/a/dpoJobs/",
    ],
)
def test_names_without_a_run_id_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        run_id_of(name)


def test_jobs_without_a_run_id_are_quarantined_once(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="bad.id", n_steps=1), fw(id="ok", n_steps=1)], time_scale=0)
    source = source_of(emulator)
    with capture_logs() as logs:
        assert [job["id"] for job in all_jobs(source)] == ["fw-sft.emulator.ok"]
        all_jobs(source)
    assert list(source.quarantined) == ["accounts/emulator/supervisedFineTuningJobs/bad.id"]
    assert [e["event"] for e in logs].count("job.quarantined") == 1


# Metrics


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    made = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield made
    made.close()


def test_the_growing_metrics_file_is_read_incrementally_without_duplicates(
    start_emulator: StartEmulator, store: SqlStore
) -> None:
    emulator = start_emulator(
        [fw(id="grow", n_steps=30, n_epochs=3, step_seconds=10, with_validation_file=True)],
        time_scale=0,
    )
    source = source_of(emulator)
    sink = MemorySink()
    bridge = Bridge(source, sink, store, WandbDefaults(project="p"))
    seen: list[int] = []
    for _ in range(7):
        emulator.advance(47)
        bridge.poll()
        seen = [row.step for row in sink.rows_of("fw-sft.emulator.grow")]
    assert seen == list(range(1, 31)), "every step once, in order"
    assert emulator.counts["fw_get"] == 0, "the URL came with the listing"
    lines = file_lines(emulator, "accounts/emulator/supervisedFineTuningJobs/grow")
    rows = {row.step: row.values for row in sink.rows_of("fw-sft.emulator.grow")}
    for line in lines:
        want = {k: v for k, v in line.items() if k not in ("step", "timestamp")}
        assert rows[line["step"]] == pytest.approx(want)
    assert {"eval/loss", "train/grad_norm"} <= set().union(*rows.values())
    assert store.get_job("fw-sft.emulator.grow").status == "succeeded"  # type: ignore[union-attr]


def test_metric_lines_of_any_shape_and_repeats() -> None:
    content = b"\n".join(
        [
            b'{"step": 1, "timestamp": "2026-05-01T12:00:00Z", "train/loss": 2.0}',
            b'{"step": 1, "timestamp": "2026-05-01T12:00:00Z", "train/loss": 2.0}',
            b'{"step": 2, "data": {"train/loss": 1.5}}',
            b'{"step": 2, "eval/loss": 1.7}',
            b'{"step": "x"}',
            b"[1]",
            b'{"step": 3, "train/lo',
        ]
    )
    got = metric_events(content)
    assert [e["id"] for e in got] == ["fireworks-step-1", "fireworks-step-2", "fireworks-step-2-2"]
    assert got[0]["created_at"] == 1777636800
    assert got[1]["data"] == {"step": 2, "train/loss": 1.5}
    assert got[2]["data"] == {"step": 2, "eval/loss": 1.7}


def test_an_expired_signed_url_is_refreshed_once(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(
        [
            fw(id="sft", n_steps=5, created_offset=-600),
            fw(id="dpo", method="dpo", n_steps=5, created_offset=-600),
        ],
        time_scale=0,
    )
    source = source_of(emulator)
    all_jobs(source)
    assert len(events(source, "fw-dpo.emulator.dpo")) == 5
    emulator.advance(URL_TTL + 60)
    counts = emulator.counts
    assert [e["data"]["step"] for e in events(source, "fw-sft.emulator.sft")] == [5, 4, 3, 2, 1]
    assert len(events(source, "fw-dpo.emulator.dpo")) == 5
    after = emulator.counts
    assert after["fw_get"] - counts["fw_get"] == 1, "a fresh SFT URL from the job"
    assert after["fw_metrics_endpoint"] - counts["fw_metrics_endpoint"] == 1, "and DPO's"
    assert after["metrics_file"] - counts["metrics_file"] == 4, "each refused once, then read"


def test_a_job_not_yet_training_costs_no_metrics_request(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="q", method="dpo", queue_seconds=100)], time_scale=0)
    source = source_of(emulator)
    all_jobs(source)
    assert events(source, "fw-dpo.emulator.q") == []
    assert emulator.counts["fw_metrics_endpoint"] == emulator.counts["metrics_file"] == 0


def test_rft_output_metrics_become_one_event_per_step(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(
        [
            fw(
                id="r",
                method="reinforcement",
                n_steps=6,
                with_validation_file=True,
                created_offset=-600,
            )
        ],
        time_scale=0,
    )
    source = source_of(emulator)
    got = events(source, "fw-rft.emulator.r")
    assert emulator.counts["fw_get"] == 1 and emulator.counts["metrics_file"] == 0
    assert [e["id"] for e in got] == [f"fireworks-step-{n}" for n in range(6, 0, -1)]
    with api(emulator) as client:
        job = client.get("/v1/accounts/emulator/reinforcementFineTuningJobs/r").json()
    curves = json.loads(job["outputMetrics"])["curves"]
    for event in got:
        index = event["data"]["step"] - 1
        assert event["data"]["average/reward"] == curves["average"]["reward"][index]
        assert event["data"]["exact_match/reward"] == curves["exact_match"]["reward"][index]
    assert "average/eval_reward" in got[0]["data"]


def test_curves_as_points_and_broken_curves() -> None:
    points = json.dumps({"curves": {"average": [{"step": 2, "reward": 0.5}, {"step": "x"}]}})
    assert curve_events(points)[0]["data"] == {"step": 2, "average/reward": 0.5}
    assert curve_events("not json") == curve_events(None) == curve_events("[]") == []


def test_checkpoints_are_none(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="c", n_steps=2, created_offset=-600)], time_scale=0)
    assert source_of(emulator).checkpoints("fw-sft.emulator.c") == []


# Errors


def test_a_refused_key_is_an_auth_error(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="a", n_steps=2)], time_scale=0)
    source = source_of(emulator, key="fw-wrong")
    with pytest.raises(SourceRejected, match="HTTP 401"):
        all_jobs(source)
    with pytest.raises(SourceRejected, match="HTTP 401"):
        source.get_job("fw-sft.emulator.a")
    other = FireworksSource(api_key=API_KEY, account_id="someone-else", base_url=emulator.base_url)
    with pytest.raises(SourceRejected, match="HTTP 403"):
        all_jobs(other)


def test_an_unknown_job_is_not_found(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="a", n_steps=2)], time_scale=0)
    source = source_of(emulator)
    for missing in ("fw-sft.emulator.nope", "fw-dpo.emulator.a", "fw-sft.other.a", "ftjob-x"):
        with pytest.raises(JobNotFound):
            source.get_job(missing)
        with pytest.raises(JobNotFound):
            events(source, missing)


def test_rate_limits_and_server_errors_are_retryable(start_emulator: StartEmulator) -> None:
    emulator = start_emulator([fw(id="a", n_steps=2)], time_scale=0)
    emulator.set_faults(error_rate=1.0, status=429, retry_after=3)
    with pytest.raises(SourceUnavailable, match="HTTP 429") as limited:
        all_jobs(source_of(emulator))
    assert limited.value.retry_after == 3
    emulator.set_faults(error_rate=1.0, status=500, retry_after=0)
    before = emulator.request_count
    with pytest.raises(SourceUnavailable, match="HTTP 500"):
        source_of(emulator, retries=2).get_job("fw-sft.emulator.a")
    assert emulator.request_count - before == 3, "bounded retries"
    emulator.set_faults(error_rate=0.5, status=503, retry_after=0)
    assert len(all_jobs(source_of(emulator, retries=6))) == 1, "a transient error retried"
    emulator.set_faults()
    emulator.stop()
    with pytest.raises(SourceUnavailable, match="could not connect"):
        all_jobs(source_of(emulator))


# Configuration


def test_a_fireworks_source_needs_an_account_id() -> None:
    table = {"name": "fw", "kind": "fireworks", "api_key": "fw-key"}
    with pytest.raises(ConfigError, match="account_id"):
        source_configs(Settings(sources=[table]))
    (config,) = source_configs(Settings(sources=[table | {"account_id": "acme"}]))
    source = make_source(config, Settings(sources=[]), {})
    assert isinstance(source, FireworksSource)
    assert str(source._api.base_url).rstrip("/") == "https://api.fireworks.ai"
    assert source.account_id == "acme" and source.name == "fw"
