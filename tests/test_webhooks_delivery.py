"""Outbox + dispatcher + real HTTP receivers: at-least-once, same id, verifiably signed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from structlog.testing import capture_logs

from bridge.leases import Leases
from bridge.ports import StatusChange
from bridge.schema import metadata
from bridge.store import create_db_engine
from bridge.webhooks import (
    Dispatcher,
    HttpSender,
    RetrySchedule,
    Targets,
    WebhookEvent,
    enable_target,
    enqueue,
    enqueue_change,
    outbox,
    pending_count,
    recent,
    replay,
    send_test,
    status_event,
    targets_from_settings,
)
from tests.factories import job
from tests.webhook_receiver import NEW_SECRET, SECRET, FakeClock, Receiver, Reply, free_port


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = create_db_engine(f"sqlite:///{tmp_path / 'bridge.db'}")
    metadata.create_all(db)
    yield db
    db.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def webhooks(*receivers: Receiver, secret: str = SECRET, **extra: Any) -> Targets:
    tables = [
        {"name": f"r{i}", "url": r.url, "secret": secret, **extra}
        for i, r in enumerate(receivers, start=1)
    ]
    return targets_from_settings([], None, tables, allow_private=True)


def event(
    status: str = "succeeded", job_id: str = "ftjob-1", seq: int = 1, **kw: Any
) -> WebhookEvent:
    change = StatusChange(job_id, "running", status, job(job_id, status=status, **kw))
    return status_event(change, seq=seq, run_url="https://wandb.ai/e/p/runs/x", created_at=1)


def dispatcher(engine: Engine, targets: Targets, clock: FakeClock, **kw: Any) -> Dispatcher:
    schedule = kw.pop("schedule", RetrySchedule(delays=(5, 30, 120), jitter=0))
    sender = kw.pop("sender", None) or HttpSender(
        timeout=kw.pop("timeout", 2.0), allow_private=True, clock=clock
    )
    return Dispatcher(engine, targets, sender=sender, clock=clock, schedule=schedule, **kw)


def put(engine: Engine, targets: Targets, *events: WebhookEvent) -> int:
    """Enqueue in one transaction, due a minute ago (so at once for this test's FakeClock)."""
    with engine.begin() as conn:
        return sum(enqueue(conn, e, targets, now=time.time() - 60) for e in events)


def test_a_delivery_is_signed_and_verifies(engine: Engine, clock: FakeClock) -> None:
    with Receiver() as receiver:
        targets = webhooks(receiver)
        evt = event()
        assert put(engine, targets, evt) == 1
        d = dispatcher(engine, targets, clock)
        assert d.run_once() == 1
        d.stop()
    (request,) = receiver.received
    assert request.verified, request.problem
    assert request.webhook_id == evt.id
    assert request.body == evt.body()
    assert request.headers["user-agent"].startswith("ftbridge/")
    assert json.loads(request.body)["data"]["status"] == "succeeded"
    (row,) = recent(engine)
    assert (row.state, row.attempts, row.last_status, row.type) == (
        "delivered",
        1,
        200,
        "fine_tuning.job.succeeded",
    )
    assert pending_count(engine) == 0


def test_rotation_both_secrets_sign(engine: Engine, clock: FakeClock) -> None:
    with Receiver([SECRET]) as old, Receiver([NEW_SECRET]) as new:
        targets = webhooks(old, new, secret=f"{NEW_SECRET},{SECRET}")
        put(engine, targets, event())
        dispatcher(engine, targets, clock).run_once()
    assert old.received[0].verified and new.received[0].verified
    assert len(old.received[0].headers["webhook-signature"].split()) == 2


def test_server_errors_are_retried_with_the_same_id(engine: Engine, clock: FakeClock) -> None:
    with Receiver(replies=[Reply(500), Reply(503)]) as receiver:
        targets = webhooks(receiver)
        put(engine, targets, event())
        d = dispatcher(engine, targets, clock)
        assert d.run_once() == 1
        assert d.run_once() == 0  # not due yet
        clock.advance(5)
        assert d.run_once() == 1
        clock.advance(30)
        assert d.run_once() == 1
    first, second, third = receiver.received
    assert all(r.verified for r in receiver.received), [r.problem for r in receiver.received]
    assert first.webhook_id == second.webhook_id == third.webhook_id
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps[0] < stamps[1] < stamps[2]
    (row,) = recent(engine)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 200)


def test_retry_after_is_honoured(engine: Engine, clock: FakeClock) -> None:
    date = formatdate(clock.now + 300, usegmt=True)
    replies = [Reply(429, {"retry-after": "120"}), Reply(503, {"retry-after": date})]
    with Receiver(replies=replies) as receiver:
        targets = webhooks(receiver)
        put(engine, targets, event())
        d = dispatcher(engine, targets, clock)
        d.run_once()
        (row,) = recent(engine)
        assert row.last_status == 429
        assert row.next_attempt_at == pytest.approx(clock.now + 120)
        clock.advance(119)
        assert d.run_once() == 0
        clock.advance(1)
        assert d.run_once() == 1
        (row,) = recent(engine)
        assert row.next_attempt_at == pytest.approx(clock.now + 180, abs=2)
        clock.advance(181)
        d.run_once()
    assert len(receiver.received) == 3
    assert recent(engine)[0].state == "delivered"


def test_a_redirect_is_a_failure_and_is_not_followed(engine: Engine, clock: FakeClock) -> None:
    with Receiver() as elsewhere:
        redirect = Reply(302, {"location": elsewhere.url})
        with Receiver(replies=[redirect]) as receiver:
            targets = webhooks(receiver)
            put(engine, targets, event())
            dispatcher(engine, targets, clock).run_once()
    assert len(receiver.received) == 1
    assert elsewhere.received == []
    (row,) = recent(engine)
    assert (row.state, row.last_status) == ("pending", 302)
    assert row.last_error is not None and "redirect" in row.last_error


def test_410_disables_the_target(engine: Engine, clock: FakeClock) -> None:
    with Receiver(default=Reply(410)) as gone, Receiver() as fine:
        targets = webhooks(gone, fine)
        put(engine, targets, event(seq=1), event(seq=2))
        with capture_logs() as logs:
            dispatcher(engine, targets, clock).run_once()
        assert len(gone.received) == 1  # the second was not even tried
        assert len(fine.received) == 2
        states = {(r.target, r.state) for r in recent(engine)}
        assert states == {("r1", "disabled"), ("r2", "delivered")}
        assert [e["event"] for e in logs].count("webhook.target_disabled") == 1
        put(engine, targets, event(seq=3))
        assert {r.state for r in recent(engine) if r.target == "r1"} == {"disabled"}
        assert enable_target(engine, "r1") == 3
        assert pending_count(engine) == 4  # r1's three, and r2's newest


def test_a_receiver_down_for_a_while_loses_nothing(engine: Engine, clock: FakeClock) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    targets = targets_from_settings([url], SECRET, allow_private=True)
    events = [event(seq=1), event("failed", seq=2), event("running", job_id="ftjob-2")]
    put(engine, targets, *events)
    d = dispatcher(engine, targets, clock)
    with capture_logs() as logs:
        assert d.run_once() == 3
        clock.advance(5)
        assert d.run_once() == 3
        rows = recent(engine)
        assert {r.state for r in rows} == {"pending"}
        assert all(r.last_error and "Connect" in r.last_error for r in rows)
        with Receiver(port=port) as receiver:
            clock.advance(30)
            assert d.run_once() == 3
        d.stop()
    assert {r.webhook_id for r in receiver.received} == {e.id for e in events}
    assert all(r.verified for r in receiver.received)
    assert {r.state for r in recent(engine)} == {"delivered"}
    names = [e["event"] for e in logs]
    assert names.count("webhook.target_failing") == 1, names
    assert names.count("webhook.target_recovered") == 1, names


def test_giving_up_after_the_last_attempt(engine: Engine, clock: FakeClock) -> None:
    with Receiver(default=Reply(500)) as receiver:
        targets = webhooks(receiver)
        put(engine, targets, event())
        d = dispatcher(engine, targets, clock, schedule=RetrySchedule(delays=(1,), jitter=0))
        with capture_logs() as logs:
            d.run_once()
            clock.advance(1)
            d.run_once()
            clock.advance(3600)
            assert d.run_once() == 0
    assert len(receiver.received) == 2
    (row,) = recent(engine)
    assert (row.state, row.attempts) == ("failed", 2)
    assert "webhook.gave_up" in [e["event"] for e in logs]
    assert replay(engine, row.event_id) == 1
    assert pending_count(engine) == 1


def test_a_slow_target_does_not_delay_a_fast_one(engine: Engine) -> None:
    with Receiver(default=Reply(delay=3)) as slow, Receiver() as fast:
        targets = webhooks(slow, fast)
        put(engine, targets, event(seq=1), event(seq=2))
        d = Dispatcher(
            engine,
            targets,
            sender=HttpSender(timeout=1.0, allow_private=True),
            schedule=RetrySchedule(delays=(60,), jitter=0),
            workers=1,
        )
        started = time.monotonic()
        futures = d.pump()
        assert time.monotonic() - started < 0.5  # the caller never waits for a delivery
        fast.wait_for(2, timeout=2)
        assert fast.received[-1].at - started < 0.9  # while the slow one still hangs
        assert sum(f.result() for f in futures) == 4
        d.stop()
    rows = {(r.target, r.event_id): r for r in recent(engine)}
    slow_rows = [r for (name, _), r in rows.items() if name == "r1"]
    assert all(r.state == "pending" and r.last_error == "timed out after 1s" for r in slow_rows)
    assert all(r.state == "delivered" for (name, _), r in rows.items() if name == "r2")


def test_filters_decide_who_gets_what(engine: Engine, clock: FakeClock) -> None:
    with Receiver() as everything, Receiver() as failures, Receiver() as team_a:
        tables: list[dict[str, Any]] = [
            {"name": "all", "url": everything.url, "secret": SECRET},
            {
                "name": "fail",
                "url": failures.url,
                "secret": SECRET,
                "event_types": ["fine_tuning.job.failed"],
            },
            {
                "name": "a",
                "url": team_a.url,
                "secret": SECRET,
                "metadata": {"team": "a"},
                "models": ["gpt-4o-mini*"],
            },
        ]
        targets = targets_from_settings([], None, tables, allow_private=True)
        put(
            engine,
            targets,
            event("running", seq=1),
            event("failed", seq=2, metadata={"team": "a"}),
            event("succeeded", job_id="ftjob-2", metadata={"team": "b"}),
        )
        dispatcher(engine, targets, clock).run_once()

    def types(r: Receiver) -> list[str]:
        return sorted(json.loads(x.body)["type"] for x in r.received)

    assert types(everything) == [
        "fine_tuning.job.failed",
        "fine_tuning.job.running",
        "fine_tuning.job.succeeded",
    ]
    assert types(failures) == ["fine_tuning.job.failed"]
    assert types(team_a) == ["fine_tuning.job.failed"]


def test_enqueue_is_part_of_the_callers_transaction(engine: Engine) -> None:
    targets = targets_from_settings(["https://hooks.example/x"], SECRET)
    with engine.connect() as conn:
        transaction = conn.begin()
        assert enqueue(conn, event(), targets) == 1
        transaction.rollback()
    with engine.connect() as conn:
        count = sa.select(sa.func.count()).select_from(outbox.webhook_events)
        assert conn.execute(count).scalar() == 0
    assert pending_count(engine) == 0
    assert put(engine, targets, event()) == 1
    assert put(engine, targets, event()) == 0  # the same event again adds nothing
    assert pending_count(engine) == 1


def test_a_dead_replicas_claim_lapses_with_its_heartbeat(engine: Engine) -> None:
    """A replica claims a delivery and dies mid-attempt: another one takes it over once the
    dead one's heartbeat is older than the lease time, not only when the claim runs out."""
    targets = targets_from_settings(["https://hooks.example/x"], SECRET)
    put(engine, targets, event())
    now = time.time()
    Leases(engine, owner="replica-a", clock=lambda: now - 100).heartbeat()
    Leases(engine, owner="replica-b", clock=lambda: now).heartbeat()
    assert [d.event_id for d in outbox.due(engine, now - 50, owner="replica-a")]
    # Claimed until 70 s from now: without the heartbeat rule nobody else may try it.
    assert outbox.due(engine, now, owner="replica-b") == []
    # replica-a alive (beat within the last 200 s): its claim stands.
    assert outbox.due(engine, now, owner="replica-b", dead_before=now - 200) == []
    # replica-a silent for 100 s, the lease time 30 s: dead, the claim lapses.
    (taken,) = outbox.due(engine, now, owner="replica-b", dead_before=now - 30)
    assert taken.event_id == event().id
    # ... and is replica-b's now, so replica-a cannot take it back.
    assert outbox.due(engine, now, owner="replica-a") == []


def test_replay_resends_with_the_same_id(engine: Engine, clock: FakeClock) -> None:
    with Receiver() as receiver:
        targets = webhooks(receiver)
        evt = event()
        put(engine, targets, evt)
        d = dispatcher(engine, targets, clock)
        d.run_once()
        (row,) = recent(engine)
        assert replay(engine, row.id, now=clock.now) == 1
        d.run_once()
        assert replay(engine, evt.id, now=clock.now) == 1
        assert replay(engine, "nonsense") == 0
        d.run_once()
    assert [r.webhook_id for r in receiver.received] == [evt.id] * 3
    assert receiver.received[0].body == receiver.received[2].body


def test_background_dispatch_delivers_soon_after_wake(engine: Engine) -> None:
    with Receiver() as receiver:
        targets = webhooks(receiver)
        d = Dispatcher(engine, targets, sender=HttpSender(timeout=2, allow_private=True))
        d.start()
        put(engine, targets, event())
        d.wake()
        receiver.wait_for(1, timeout=3)
        d.stop(timeout=2)
    assert receiver.received[0].verified


def test_a_target_removed_from_the_config_is_given_up(engine: Engine, clock: FakeClock) -> None:
    targets = targets_from_settings(["https://hooks.example/x"], SECRET)
    put(engine, targets, event())
    dispatcher(engine, Targets(), clock).run_once()
    (row,) = recent(engine)
    assert (row.state, row.last_error) == ("failed", "target no longer configured")


# Chat through Apprise, to a real local endpoint (Apprise's json:// schema)
def chat_targets(receiver: Receiver, **extra: Any) -> Targets:
    url = f"json://127.0.0.1:{receiver.port}/notify"
    return targets_from_settings(
        [], None, [], [], True, toml_chats=[{"name": "chat", "url": url, **extra}]
    )


def test_chat_alert_through_apprise(engine: Engine, clock: FakeClock) -> None:
    error = {"code": "invalid_training_file", "message": "Bad line 3", "param": None}
    with Receiver(secrets=(), replies=[Reply(500)]) as receiver:
        targets = chat_targets(receiver, event_types=["fine_tuning.job.failed"])
        put(engine, targets, event("running", seq=1), event("failed", seq=2, error=error))
        d = dispatcher(engine, targets, clock)
        assert d.run_once() == 1
        assert recent(engine)[0].state == "pending"  # Apprise said no: retried
        clock.advance(5)
        assert d.run_once() == 1
    assert len(receiver.received) == 2
    payload = json.loads(receiver.received[-1].body)
    assert receiver.received[-1].path == "/notify"
    assert payload["title"] == "Fine-tune ftjob-1 failed"
    assert "Error: invalid_training_file: Bad line 3" in payload["message"]
    assert "W&B run: https://wandb.ai/e/p/runs/x" in payload["message"]
    assert payload["type"] == "failure"
    assert recent(engine)[0].state == "delivered"


def test_send_test_pings_a_webhook_and_a_chat() -> None:
    with Receiver() as hook, Receiver(secrets=()) as chat:
        hook_target = webhooks(hook, event_types=["fine_tuning.job.failed"]).webhooks[0]
        evt, result = send_test(hook_target, allow_private=True)
        assert result.ok, result
        chat_target = chat_targets(chat).chats[0]
        _, chat_result = send_test(chat_target, allow_private=True)
        assert chat_result.ok, chat_result
    (request,) = hook.received
    assert request.verified and request.webhook_id == evt.id
    assert json.loads(request.body)["type"] == "fine_tuning.job.test"
    assert json.loads(chat.received[0].body)["title"] == "ftbridge test notification"


def test_enqueue_change_skips_a_backfill_unless_asked(engine: Engine) -> None:
    targets = targets_from_settings(["https://hooks.example/x"], SECRET)
    done = StatusChange("ftjob-9", None, "succeeded", job("ftjob-9", status="succeeded"))
    running = StatusChange("ftjob-9", None, "running", job("ftjob-9"))
    with engine.begin() as conn:
        assert enqueue_change(conn, done, targets, seq=1, run_url=None) is None
        queued = enqueue_change(conn, running, targets, seq=1, run_url=None, source="openai")
        assert queued is not None and queued.data["source"] == "openai"
        again = enqueue_change(conn, done, targets, seq=2, run_url=None, notify_backfill=True)
        assert again is not None and again.type == "fine_tuning.job.succeeded"
        assert enqueue_change(conn, running, targets, seq=1, run_url=None) is None  # stored
        assert enqueue_change(conn, running, Targets(), seq=5, run_url=None) is None
    assert pending_count(engine) == 2
