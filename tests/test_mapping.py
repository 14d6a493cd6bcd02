"""Pure mapping: job -> run spec, event -> row, job -> summary."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import mapping
from bridge.mapping import MetricRow, WandbDefaults
from tests.factories import job, metrics

DEFAULTS = WandbDefaults(project="fine-tunes", entity="team")


def test_run_spec_keys_the_run_by_job_id_with_default_project_and_tags() -> None:
    spec = mapping.run_spec(job("ftjob-abc"), DEFAULTS)
    assert spec.run_id == "ftjob-abc"
    assert spec.name == "ftjob-abc"
    assert (spec.project, spec.entity) == ("fine-tunes", "team")
    assert spec.tags == (
        "openai/fine-tuning",
        "openai/ftjob-abc",
        "openai/gpt-4o-mini-2024-07-18",
    )


def test_run_spec_takes_the_jobs_own_integration_settings() -> None:
    own = {"project": "theirs", "entity": "ent", "name": "nice name", "tags": ["a", "b" * 80]}
    spec = mapping.run_spec(
        job("ftjob-x", integrations=[{"type": "wandb", "wandb": own}]), DEFAULTS, "azure"
    )
    assert (spec.project, spec.entity, spec.name) == ("theirs", "ent", "nice name")
    assert "a" in spec.tags and "b" * 64 in spec.tags and "source/azure" in spec.tags
    assert all(len(t) <= 64 for t in spec.tags)
    assert spec.config["source"] == "azure"


def test_config_holds_settings_not_volatile_fields() -> None:
    config = mapping.run_config(
        job(suffix="mine", metadata={"team": "nlp"}, user_provided_suffix="mine")
    )
    assert config["model"] == "gpt-4o-mini-2024-07-18"
    assert config["training_file"] == "file-train"
    assert config["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto"}
    assert config["method"]["type"] == "supervised"
    assert config["method_type"] == "supervised"
    assert config["seed"] == 42 and config["suffix"] == "mine"
    assert config["metadata"] == {"team": "nlp"}
    assert config["user_provided_suffix"] == "mine"  # an extra field the SDK does not know
    assert config["job_id"] == "ftjob-1"
    for volatile in ("status", "finished_at", "trained_tokens", "fine_tuned_model", "error"):
        assert volatile not in config


def test_native_jobs_are_skipped_unless_mirroring() -> None:
    native = job(integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert not mapping.should_write_run(native, "skip")
    assert mapping.should_write_run(native, "mirror")
    assert mapping.should_write_run(job(), "skip")


def test_supervised_metrics_event_becomes_one_row_at_its_step() -> None:
    event = metrics(
        "e1",
        7,
        train_mean_token_accuracy=0.5,
        valid_loss=0.9,
        valid_mean_token_accuracy=0.4,
        full_valid_loss=0.8,
        full_valid_mean_token_accuracy=0.45,
    )
    row = mapping.metric_row(event)
    assert row is not None
    assert row.values.pop("train_loss") == pytest.approx(1 / 7)
    assert row == MetricRow(
        7,
        {
            "train_mean_token_accuracy": 0.5,
            "valid_loss": 0.9,
            "valid_mean_token_accuracy": 0.4,
            "full_valid_loss": 0.8,
            "full_valid_mean_token_accuracy": 0.45,
        },
    )


def test_rft_nested_metrics_are_flattened_with_graders_by_name() -> None:
    event = metrics(
        "e",
        3,
        scores={
            "train_reward_mean": 0.5,
            "graders": [
                {"name": "exact", "type": "string_check", "train_reward_mean": 0.7},
                {"name": "judge", "type": "score_model", "valid_reward_mean": 0.2},
            ],
        },
        usage={"tokens": 10},
        timing={"step": {"seconds": 1.5}},
    )
    row = mapping.metric_row(event)
    assert row is not None
    assert row.values["scores/train_reward_mean"] == 0.5
    assert row.values["scores/exact/train_reward_mean"] == 0.7
    assert row.values["scores/judge/valid_reward_mean"] == 0.2
    assert row.values["usage/tokens"] == 10.0
    assert row.values["timing/step/seconds"] == 1.5
    assert "scores/exact/type" not in row.values


@pytest.mark.parametrize(
    "event",
    [
        {"id": "e", "type": "message", "data": {"step": 3}},
        {"id": "e", "type": "metrics"},
        {"id": "e", "type": "metrics", "data": None},
        {"id": "e", "type": "metrics", "data": {"train_loss": 1.0}},
        {"id": "e", "type": "metrics", "data": {"step": "3"}},
        {"id": "e", "type": "metrics", "data": {"step": -1}},
        {"id": "e", "type": "metrics", "data": {"step": 2.5}},
        {"id": "e", "type": "metrics", "data": {"step": math.nan}},
        {"id": "e", "type": "metrics", "data": {"step": True}},
    ],
)
def test_events_without_a_usable_step_give_no_row(event: dict[str, Any]) -> None:
    assert mapping.metric_row(event) is None


def test_nan_and_huge_values_are_kept_as_floats() -> None:
    row = mapping.metric_row(metrics("e", 1, train_loss=math.nan, big=10**400, name="x"))
    assert row is not None
    assert math.isnan(row.values["train_loss"])
    assert row.values["big"] == math.inf
    assert "name" not in row.values


def test_rows_of_the_same_step_merge() -> None:
    merged = mapping.merge_rows(
        [MetricRow(1, {"a": 1}), MetricRow(2, {"a": 2}), MetricRow(1, {"b": 3})]
    )
    assert merged == [MetricRow(1, {"a": 1, "b": 3}), MetricRow(2, {"a": 2})]


def test_summary_of_a_failed_job_carries_the_error() -> None:
    failed = job(
        status="failed",
        finished_at=1_700_000_900,
        error={"code": "invalid_training_file", "message": "bad line 3", "param": "training_file"},
    )
    assert mapping.run_summary(failed) == {
        "status": "failed",
        "finished_at": 1_700_000_900,
        "error_code": "invalid_training_file",
        "error_message": "bad line 3",
        "error_param": "training_file",
    }


def test_summary_ignores_the_all_null_error_object() -> None:
    done = job(status="succeeded", fine_tuned_model="ft:gpt:org::x", trained_tokens=1234)
    summary = mapping.run_summary(done)
    assert summary["fine_tuned_model"] == "ft:gpt:org::x"
    assert summary["trained_tokens"] == 1234
    assert "error_code" not in summary


@pytest.mark.parametrize(
    ("status", "code"),
    [("succeeded", 0), ("failed", 1), ("cancelled", 130), ("something_new", 1)],
)
def test_exit_codes(status: str, code: int) -> None:
    assert mapping.exit_code(status) == code


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=12))
def test_mapping_never_raises_on_arbitrary_jobs(raw: dict[str, Any]) -> None:
    raw["id"] = "ftjob-fuzz"
    spec = mapping.run_spec(raw, DEFAULTS)
    assert spec.run_id == "ftjob-fuzz"
    assert all(isinstance(t, str) and len(t) <= 64 for t in spec.tags)
    mapping.run_summary(raw)
    mapping.should_write_run(raw, "skip")


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8), json_values)
def test_mapping_never_raises_on_arbitrary_events(data: dict[str, Any], step: Any) -> None:
    data["step"] = step
    row = mapping.metric_row({"id": "e", "type": "metrics", "data": data})
    if row is not None:
        assert isinstance(row.step, int) and row.step >= 0
        assert all(isinstance(v, float) for v in row.values.values())
