"""``ftbridge webhooks test``: one signed ping to one target, outside the outbox."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from bridge.webhooks.delivery import AttemptResult, HttpSender, Sender
from bridge.webhooks.events import WebhookEvent, ping_event
from bridge.webhooks.targets import ChatTarget, Target, WebhookTarget


def send_test(
    target: Target,
    *,
    sender: Sender | None = None,
    allow_private: bool = False,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> tuple[WebhookEvent, AttemptResult]:
    """Send a ``fine_tuning.job.test`` event now, once; no retry, nothing stored."""
    event = ping_event(created_at=int(clock()), nonce=secrets.token_hex(8))
    own = sender is None
    used: Sender = sender or HttpSender(timeout=timeout, allow_private=allow_private, clock=clock)
    try:
        if isinstance(target, WebhookTarget):
            return event, used.send_webhook(target, event.id, event.body())
        assert isinstance(target, ChatTarget)
        return event, used.send_chat(target, event)
    finally:
        if own and isinstance(used, HttpSender):
            used.close()
