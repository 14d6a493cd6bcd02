"""The dispatcher: delivers due outbox rows, records each attempt, schedules retries.

Each target has its own lane: the due deliveries of one target are tried one after another by
one worker thread, and a target with a lane running is skipped by the next round. A slow or
dead target therefore holds one thread and delays nobody else; the poll loop only writes the
outbox and never waits for a delivery.

A target that starts failing is logged once (``webhook.target_failing``) and once again when
it recovers (``webhook.target_recovered``); single attempts are logged at debug level.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from bridge.webhooks import outbox
from bridge.webhooks.delivery import AttemptResult, HttpSender, Sender
from bridge.webhooks.events import WebhookEvent
from bridge.webhooks.outbox import DeliveryState, DueDelivery
from bridge.webhooks.schedule import RetrySchedule
from bridge.webhooks.targets import ChatTarget, Target, Targets, WebhookTarget

log = structlog.get_logger(__name__)


class Dispatcher:
    """``run_once`` makes every due attempt and waits for them; ``start`` does it in the
    background every ``interval`` seconds (or at once after :meth:`wake`) until :meth:`stop`."""

    def __init__(
        self,
        engine: Engine,
        targets: Targets,
        *,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        workers: int = 4,
        schedule: RetrySchedule | None = None,
        interval: float = 0.5,
        batch: int = 100,
        timeout: float = 10.0,
        owner: str | None = None,
        owner_ttl: float | None = None,
        on_attempt: Callable[[AttemptResult], object] | None = None,
    ) -> None:
        self.engine = engine
        # Told of every attempt's result (the metrics count them by outcome).
        self.on_attempt = on_attempt
        # The replica's name, to claim deliveries when several share the database.
        self.owner = owner
        # A replica silent for this long is dead: its claims on deliveries lapse at once.
        self.owner_ttl = owner_ttl
        self._claim_for = 6 * timeout + 60  # longer than a lane of attempts takes
        self.targets = targets
        self.interval = interval
        self.batch = batch
        self._own_sender = sender is None
        self._sender: Sender = sender or HttpSender(
            timeout=timeout, allow_private=targets.allow_private
        )
        self._clock = clock
        self._schedule = schedule or RetrySchedule()
        self._pool = ThreadPoolExecutor(
            max_workers=max(workers, len(targets), 1), thread_name_prefix="ftbridge-webhook"
        )
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._running: set[Future[int]] = set()
        self._failing: dict[str, int] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # Rounds
    def pump(self) -> list[Future[int]]:
        """Start a lane for every target with due deliveries and no lane running."""
        with self._lock:
            busy = set(self._busy)
        lanes: dict[str, list[DueDelivery]] = {}
        outbox.release_settled(self.engine, self._clock())
        outbox.release_expired(self.engine, self._clock())
        due = outbox.due(
            self.engine,
            self._clock(),
            self.batch,
            skip_targets=busy,
            owner=self.owner,
            lease=self._claim_for,
            dead_before=None if self.owner_ttl is None else self._clock() - self.owner_ttl,
        )
        for item in due:
            lanes.setdefault(item.target, []).append(item)
        started = (self._start_lane(name, items) for name, items in lanes.items())
        return [future for future in started if future is not None]

    def run_once(self) -> int:
        """Make every due attempt now; returns how many attempts were made."""
        return sum(future.result() for future in self.pump())

    def _start_lane(self, name: str, items: list[DueDelivery]) -> Future[int] | None:
        with self._lock:
            if name in self._busy or self._stopping.is_set():
                return None
            self._busy.add(name)
            future = self._pool.submit(self._lane, name, items)
            self._running.add(future)
        future.add_done_callback(self._lane_done)
        return future

    def _lane_done(self, future: Future[int]) -> None:
        with self._lock:
            self._running.discard(future)

    def _lane(self, name: str, items: list[DueDelivery]) -> int:
        made = 0
        try:
            for item in items:
                if self._stopping.is_set():
                    break
                made += 1
                if self._deliver(item).outcome == "disable":
                    break
        except Exception:
            log.exception("webhook.lane_failed", target=name)
        finally:
            with self._lock:
                self._busy.discard(name)
        return made

    # One attempt
    def _deliver(self, item: DueDelivery) -> AttemptResult:
        target = self.targets.get(item.target)
        if target is None or target.kind != item.kind:
            result = AttemptResult("refused", error="target no longer configured")
        else:
            result = self._send(target, item)
        self._record(item, target, result)
        return result

    def _send(self, target: Target, item: DueDelivery) -> AttemptResult:
        try:
            if isinstance(target, WebhookTarget):
                return self._sender.send_webhook(target, item.event_id, item.body)
            assert isinstance(target, ChatTarget)
            return self._sender.send_chat(target, WebhookEvent.from_body(item.body))
        except Exception as error:
            log.exception("webhook.sender_failed", target=target.name, event_id=item.event_id)
            return AttemptResult("retry", error=f"{type(error).__name__} in the sender")

    def _record(self, item: DueDelivery, target: Target | None, result: AttemptResult) -> None:
        if self.on_attempt is not None:
            self.on_attempt(result)
        now = self._clock()
        attempts = item.attempts + 1
        state, next_at = self._next_state(attempts, result, now)
        outbox.record_attempt(
            self.engine,
            item.id,
            state=state,
            attempts=attempts,
            next_attempt_at=next_at,
            status=result.status,
            error=result.error,
            now=now,
        )
        fields = {
            "target": item.target,
            "event_id": item.event_id,
            "attempts": attempts,
            "status": result.status,
            "duration": round(result.duration, 3),
        }
        log.debug("webhook.attempt", outcome=result.outcome, error=result.error, **fields)
        if result.outcome == "disable":
            stopped = outbox.disable_target(
                self.engine, item.target, reason=result.error or "410 Gone", now=now
            )
            log.warning("webhook.target_disabled", deliveries_stopped=stopped, **fields)
        elif state == "failed":
            log.warning("webhook.gave_up", error=result.error, **fields)
        if target is not None:
            self._note_health(target.name, result)

    def _next_state(
        self, attempts: int, result: AttemptResult, now: float
    ) -> tuple[DeliveryState, float | None]:
        if result.outcome == "delivered":
            return "delivered", None
        if result.outcome == "disable":
            return "disabled", None
        if result.outcome == "refused":
            return "failed", None
        delay = self._schedule.next_delay(attempts, retry_after=result.retry_after)
        if delay is None:
            return "failed", None
        return "pending", now + delay

    def _note_health(self, name: str, result: AttemptResult) -> None:
        with self._lock:
            failures = self._failing.get(name)
            if result.ok:
                self._failing.pop(name, None)
            else:
                self._failing[name] = (failures or 0) + 1
        if result.ok and failures:
            log.info("webhook.target_recovered", target=name, failed_attempts=failures)
        elif not result.ok and failures is None:
            log.warning(
                "webhook.target_failing",
                target=name,
                outcome=result.outcome,
                status=result.status,
                error=result.error,
            )

    def failing_targets(self) -> dict[str, int]:
        """Targets whose last attempt failed, with their failures in a row."""
        with self._lock:
            return dict(self._failing)

    # Background
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="ftbridge-webhooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due deliveries now (after an enqueue) instead of at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                self.pump()
            except sa.exc.SQLAlchemyError as error:
                # The database is away (restarted, unreachable): said once, tried again.
                if not failing:
                    log.warning("webhook.store_unavailable", error=str(error).splitlines()[0])
                failing = True
            except Exception:
                log.exception("webhook.dispatch_failed")
            else:
                if failing:
                    log.info("webhook.store_available")
                failing = False
            self._wake.wait(self.interval)
            self._wake.clear()

    def flush(self, timeout: float) -> None:
        """One last round at shutdown: what is due now (a terminal notification that the
        final write of its run just released, say) is attempted, within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            started = set(self.pump())
        except sa.exc.SQLAlchemyError:
            return  # the database is away: it is all still in the outbox
        with self._lock:
            running = started | set(self._running)
        wait_futures(running, timeout=max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; wait up to ``timeout`` for attempts under way. An attempt cut short
        stays pending and is made again after a restart, with the same webhook-id."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            running = set(self._running)
        wait_futures(running, timeout=max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_sender and isinstance(self._sender, HttpSender):
            self._sender.close()
