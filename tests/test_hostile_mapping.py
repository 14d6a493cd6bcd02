"""Property tests of the mapping edge over arbitrary JSON: it never raises, and never hands
the store or W&B a value they refuse (a step out of range, a metric that is no float, a key W&B
keeps for itself, text without bound, a job id that is no run id)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import limits, mapping
from bridge.ports import StatusChange
from bridge.store import SqlStore
from bridge.webhooks.events import WebhookEvent, chat_message, job_data

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**30, 2**63, 2**31, -1, 10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["_step", "name", "step"]), inner, max_size=5
        )
    ),
    max_leaves=25,
)
STEPS = JSON | st.sampled_from([10**30, 2**63, 2**31 - 1, 2**31, -1, 1.5, 7.0, "7", True])
EVENTS = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=10), "type": st.sampled_from(["metrics", "message"])},
    optional={
        "data": st.dictionaries(st.text(max_size=8), JSON, max_size=6).flatmap(
            lambda d: STEPS.map(lambda s: {**d, "step": s})
        )
        | JSON,
        "created_at": STEPS,
    },
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(EVENTS)
def test_metric_rows_hold_only_what_wandb_takes(event: dict[str, Any]) -> None:
    row = mapping.metric_row(event)
    step = mapping.step_of(event)
    assert (row is None) == (step is None)
    assert (mapping.step_problem(event) is None) or row is None
    if row is None:
        return
    assert isinstance(row.step, int) and 0 <= row.step < limits.MAX_STEP
    assert len(row.values) <= limits.MAX_ROW_KEYS
    for key, value in row.values.items():
        assert type(value) is float
        assert len(key) <= limits.MAX_METRIC_NAME
        assert not any(part.startswith("_") for part in key.split("/") if part)
    json.dumps(mapping.merge_rows([row, row])[0].values)  # W&B's JSON takes NaN/Infinity


@FAST
@given(st.lists(EVENTS, max_size=6), JSON)
def test_the_store_takes_every_cleaned_event(events: list[dict[str, Any]], extra: Any) -> None:
    store = SqlStore("sqlite://")
    try:
        job = limits.clean_item(
            {"id": "ftjob-x", "status": "running", "created_at": 10**30, "extra": extra}
        )
        store.record_job("openai", job)
        cleaned = [limits.clean_item(e) for e in events]
        store.add_events("ftjob-x", cleaned)
        for event in store.pending_events("ftjob-x"):
            assert event.step is None or 0 <= event.step < limits.MAX_STEP
    finally:
        store.close()


@FAST
@given(JSON)
def test_cleaned_json_is_bounded(value: Any) -> None:
    cleaned = limits.clean_json(value)
    text = json.dumps(cleaned, allow_nan=True)

    def walk(item: Any) -> None:
        if isinstance(item, bool) or item is None:
            return
        if isinstance(item, int):
            assert -limits.MAX_INT64 <= item < limits.MAX_INT64
        elif isinstance(item, str):
            assert len(item) <= limits.MAX_API_TEXT
        elif isinstance(item, dict):
            for child in item.values():
                walk(child)
        elif isinstance(item, list):
            for child in item:
                walk(child)

    walk(json.loads(text))


@FAST
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "status",
                "fine_tuned_model",
                "trained_tokens",
                "finished_at",
                "estimated_finish",
                "error",
                "id",
            ]
        ),
        JSON | st.just("e" * 20_000),
    )
)
def test_summary_and_notifications_are_scalars_within_bounds(job: dict[str, Any]) -> None:
    summary = mapping.run_summary(job)
    for value in summary.values():
        assert value is None or isinstance(value, str | int | float | bool)
        if isinstance(value, str):
            assert len(value) <= limits.MAX_OUT_TEXT
        if isinstance(value, int):
            assert -limits.MAX_INT64 <= value < limits.MAX_INT64
    mapping.alert_text(job)
    change = StatusChange("ftjob-x", "running", "failed", job)
    data = job_data(change, run_url=None)
    assert all(len(v) <= limits.MAX_OUT_TEXT for v in _strings(data))
    title, body = chat_message(WebhookEvent("evt_1", "fine_tuning.job.failed", 0, data))
    assert len(body) <= limits.MAX_CHAT_TEXT and len(title) <= 250


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_two_megabyte_error_is_cut_and_says_so() -> None:
    job = {"id": "ftjob-x", "status": "failed", "error": {"code": "c", "message": "m" * 2_000_000}}
    message = mapping.run_summary(job)["error_message"]
    assert len(message) <= limits.MAX_OUT_TEXT
    assert message.endswith(f"…[truncated {2_000_000 - message.index('…')} characters]")
    data = job_data(StatusChange("ftjob-x", "running", "failed", job), run_url=None)
    assert "[truncated" in data["error"]["message"]


@FAST
@given(
    st.text(max_size=140) | st.sampled_from(["../x", "a/b", "x" * 300, "ftjob-ok", ".x", "a..b"])
)
def test_accepted_job_ids_are_accepted_by_wandb(job_id: str) -> None:
    import wandb  # noqa: PLC0415 - slow to import

    if limits.run_id_problem(job_id) is None:
        assert wandb.Settings(run_id=job_id).run_id == job_id
        assert "/" not in job_id and ".." not in job_id and len(job_id) <= 128
    else:
        assert not mapping.should_write_run({"id": job_id}, "mirror")


@pytest.mark.parametrize("value", [10**30, 2**63, 2**31, -1, 1.5, math.nan, math.inf, "7", True])
def test_steps_out_of_range_are_refused_with_a_reason(value: Any) -> None:
    event = {"id": "e", "type": "metrics", "data": {"step": value}}
    assert mapping.step_of(event) is None
    assert "is not an int in [0, 2147483648)" in (mapping.step_problem(event) or "")
