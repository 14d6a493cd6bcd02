"""The one job model at the source boundary: OpenAI's jobs (and Azure's older status words) to
the model, unknown statuses kept raw and watched safely, and the mapping and webhooks reading
the provider from the model."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bridge import mapping
from bridge.mapping import WandbDefaults
from bridge.ports import StatusChange
from bridge.sources.model import STATUSES, Job
from bridge.sources.openai_model import job_model
from bridge.webhooks.events import job_data
from tests.factories import job

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def test_an_openai_job_keeps_its_fields_and_says_its_provider() -> None:
    raw = job("ftjob-1", status="succeeded", fine_tuned_model="ft:x", user_provided_suffix="s")
    model = job_model(raw)
    assert model["provider"] == "openai"
    assert (model["status"], model["provider_status"]) == ("succeeded", "succeeded")
    assert model["model"] == raw["model"]
    assert model["fine_tuned_model"] == "ft:x"
    assert model["raw"] == raw
    Job.model_validate(model)


def test_azure_words_map_to_the_vocabulary_and_unknown_ones_are_watched() -> None:
    assert job_model(job(status="pending"))["status"] == "queued"
    assert job_model(job(status="notRunning"))["status"] == "queued"
    with capture_logs() as logs:
        first = job_model(job(status="warming_up_gpus"))
        job_model(job(status="warming_up_gpus"))
    assert (first["status"], first["provider_status"]) == ("running", "warming_up_gpus")
    assert [e["event"] for e in logs] == ["source.unknown_status"]  # said once


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(list(job())), JSON))
def test_any_json_becomes_a_valid_model(fields: dict[str, Any]) -> None:
    model = job_model({**fields, "id": "ftjob-x"})
    Job.model_validate(model)
    assert model["status"] in STATUSES


def test_tags_summary_and_artifacts_follow_the_provider() -> None:
    model = {
        **job_model(job("ft-abc", status="succeeded", fine_tuned_model="me/llama-ft")),
        "provider": "together",
        "provider_status": "completed",
    }
    spec = mapping.run_spec(model, WandbDefaults(project="p"), "tg")
    assert spec.tags[:3] == (
        "together/fine-tuning",
        "together/ft-abc",
        f"together/{model['model']}",
    )
    assert "raw" not in spec.config and "provider_status" not in spec.config
    assert spec.config["organization_id"] == "org-1"  # the provider's other scalar fields
    summary = mapping.run_summary(model)
    assert (summary["status"], summary["provider_status"]) == ("succeeded", "completed")
    artifact = mapping.model_artifact(model)
    assert artifact is not None and artifact.reference == "together://me/llama-ft"


def test_webhooks_carry_the_provider_and_its_status_word() -> None:
    model = {**job_model(job("ft-abc", status="running")), "provider": "together"}
    model["provider_status"] = "compressing"
    data = job_data(StatusChange("ft-abc", "queued", "running", model), run_url=None)
    assert (data["provider"], data["provider_status"]) == ("together", "compressing")
