"""Pure mapping: status change -> event, event -> chat text; the retry schedule; signatures."""

from __future__ import annotations

import json
import random
import re
import time
from email.utils import formatdate
from typing import Any

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from bridge.ports import StatusChange
from bridge.sources.model import STATUSES
from bridge.webhooks import events, schedule, signing
from bridge.webhooks.events import WebhookEvent, chat_message, status_event
from tests.factories import job
from tests.webhook_receiver import NEW_SECRET, SECRET, verify

NOW = 1_700_000_500


def change(status: str, previous: str | None = "running", **extra: Any) -> StatusChange:
    return StatusChange("ftjob-1", previous, status, job(status=status, **extra))


@pytest.mark.parametrize("status", STATUSES)
def test_every_known_status_maps_to_its_event_type(status: str) -> None:
    event = status_event(
        change(status), seq=2, run_url="https://wandb.ai/e/p/runs/x", created_at=NOW
    )
    assert event.type == f"fine_tuning.job.{status}"
    assert event.data["id"] == "ftjob-1"
    assert event.data["status"] == status
    assert event.data["previous_status"] == "running"
    assert event.data["model"] == "gpt-4o-mini-2024-07-18"
    assert event.data["wandb_run_url"] == "https://wandb.ai/e/p/runs/x"
    assert event.created_at == NOW


def test_an_unknown_status_still_makes_an_event() -> None:
    event = status_event(change("Weird-Status 2!"), seq=1, run_url=None, created_at=NOW)
    assert event.type == "fine_tuning.job.weird_status"
    assert event.data["status"] == "Weird-Status 2!"
    assert events.event_type("!!!") == "fine_tuning.job.unknown"


@given(st.text())
def test_event_types_are_always_clean(status: str) -> None:
    assert re.fullmatch(r"fine_tuning\.job\.[a-z_]+", events.event_type(status))


def test_the_all_null_error_of_a_running_job_is_dropped() -> None:
    event = status_event(change("running", previous="queued"), seq=1, run_url=None, created_at=NOW)
    assert event.data["error"] is None


def test_a_real_error_is_kept() -> None:
    error = {"code": "invalid_training_file", "message": "Bad line 3", "param": "training_file"}
    event = status_event(change("failed", error=error), seq=3, run_url=None, created_at=NOW)
    assert event.data["error"] == error
    message_only = {"code": None, "message": "boom", "param": None}
    assert events.job_error(message_only) == message_only
    assert events.job_error(None) is None


def test_ids_are_deterministic_and_distinct() -> None:
    first = status_event(change("succeeded"), seq=4, run_url=None, created_at=NOW)
    again = status_event(change("succeeded"), seq=4, run_url="x", created_at=NOW + 99)
    assert first.id == again.id
    assert re.fullmatch(r"evt_[0-9a-f]{32}", first.id)
    others = {
        status_event(change("succeeded"), seq=5, run_url=None, created_at=NOW).id,
        status_event(change("failed"), seq=4, run_url=None, created_at=NOW).id,
        status_event(
            StatusChange("ftjob-2", "running", "succeeded", job("ftjob-2")),
            seq=4,
            run_url=None,
            created_at=NOW,
        ).id,
    }
    assert first.id not in others
    assert len(others) == 3


def test_succeeded_data_and_body() -> None:
    done = change(
        "succeeded",
        fine_tuned_model="ft:gpt-4o-mini:org::abc",
        finished_at=1_700_003_725,
        trained_tokens=1234,
        metadata={"team": "a"},
    )
    event = status_event(done, seq=3, run_url=None, created_at=NOW, source="openai")
    body = event.body()
    assert b" " not in body.replace(b"gpt-4o-mini", b"")
    envelope = json.loads(body)
    assert envelope["object"] == "event"
    assert list(envelope) == ["id", "object", "type", "created_at", "data"]
    data = envelope["data"]
    assert data["duration_seconds"] == 3725
    assert data["trained_tokens"] == 1234
    assert data["metadata"] == {"team": "a"}
    assert data["source"] == "openai"
    assert WebhookEvent.from_body(body) == event


def test_chat_message_for_a_success() -> None:
    done = change(
        "succeeded", fine_tuned_model="ft:gpt-4o-mini:org::abc", finished_at=1_700_003_725
    )
    event = status_event(done, seq=3, run_url="https://wandb.ai/e/p/runs/ftjob-1", created_at=NOW)
    title, body = chat_message(event)
    assert title == "Fine-tune ftjob-1 succeeded"
    assert "Model: gpt-4o-mini-2024-07-18" in body
    assert "Status: running -> succeeded" in body
    assert "Duration: 1h 02m" in body
    assert "Fine-tuned model: ft:gpt-4o-mini:org::abc" in body
    assert "W&B run: https://wandb.ai/e/p/runs/ftjob-1" in body
    assert events.chat_severity(event) == "success"


def test_chat_message_for_a_failure() -> None:
    error = {"code": "invalid_training_file", "message": "Bad line 3", "param": None}
    event = status_event(change("failed", error=error), seq=3, run_url=None, created_at=NOW)
    title, body = chat_message(event)
    assert title == "Fine-tune ftjob-1 failed"
    assert "Error: invalid_training_file: Bad line 3" in body
    assert "W&B run" not in body
    assert events.chat_severity(event) == "failure"


def test_backfill_of_terminal_jobs_is_silent_unless_asked() -> None:
    first_seen_done = StatusChange("ftjob-1", None, "succeeded", job(status="succeeded"))
    first_seen_running = StatusChange("ftjob-1", None, "running", job())
    assert events.is_backfill(first_seen_done)
    assert not events.should_notify(first_seen_done, notify_backfill=False)
    assert events.should_notify(first_seen_done, notify_backfill=True)
    assert events.should_notify(first_seen_running, notify_backfill=False)
    assert events.should_notify(change("succeeded"), notify_backfill=False)


def test_ping_event() -> None:
    ping = events.ping_event(created_at=NOW, nonce="abc")
    assert ping.type == events.TEST_EVENT_TYPE
    assert ping.is_test
    assert chat_message(ping)[0] == "ftbridge test notification"


# The schedule
def test_default_schedule_reaches_about_three_days() -> None:
    plan = schedule.RetrySchedule(jitter=0)
    delays = [plan.next_delay(n) for n in range(1, plan.max_attempts)]
    assert delays[0] is not None and delays[0] <= 10
    total = sum(d for d in delays if d is not None)
    assert 2.5 * 86400 <= total <= 3.5 * 86400
    assert plan.next_delay(plan.max_attempts) is None
    assert plan.next_delay(0) is None


def test_jitter_is_bounded_and_seeded() -> None:
    one = schedule.RetrySchedule(rng=random.Random(7))
    two = schedule.RetrySchedule(rng=random.Random(7))
    a = [one.next_delay(n) for n in range(1, 15)]
    assert a == [two.next_delay(n) for n in range(1, 15)]
    first = a[0]
    assert first is not None and 4 <= first <= 6


def test_retry_after_pushes_later_never_earlier_and_is_capped() -> None:
    plan = schedule.RetrySchedule(delays=(5, 30), jitter=0, retry_after_cap=600)
    assert plan.next_delay(1, retry_after=120) == 120
    assert plan.next_delay(1, retry_after=1) == 5
    assert plan.next_delay(1, retry_after=10**9) == 600


def test_parse_retry_after() -> None:
    now = time.time()
    assert schedule.parse_retry_after("120", now=now) == 120
    date = schedule.parse_retry_after(formatdate(now + 60, usegmt=True), now=now)
    assert date is not None and 58 <= date <= 61
    assert schedule.parse_retry_after("soon", now=now) is None
    assert schedule.parse_retry_after(None, now=now) is None


# Signatures
def test_two_secrets_sign_at_once_and_each_verifies() -> None:
    body = status_event(change("succeeded"), seq=1, run_url=None, created_at=NOW).body()
    headers = signing.signed_headers([NEW_SECRET, SECRET], "evt_1", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    assert headers["user-agent"].startswith("ftbridge/")
    assert headers["content-type"] == "application/json"
    verify(SECRET, body, headers)  # a receiver still on the old secret
    verify(NEW_SECRET, body, headers)


def test_a_wrong_secret_or_a_changed_body_fails() -> None:
    body = b'{"id":"evt_1"}'
    headers = signing.signed_headers([SECRET], "evt_1", int(time.time()), body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(NEW_SECRET).verify(body, headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", headers)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "standard base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "standard base64"),
        ("whsec_c2hvcnQ=", "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_described_without_echoing_them(secret: str, problem: str) -> None:
    found = signing.secret_problem(secret)
    assert found is not None and problem in found
    assert secret not in found
