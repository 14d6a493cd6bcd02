"""Signed webhooks and chat alerts on every job status change, delivered at least once.

The engine writes an event to the outbox (:func:`enqueue`) in the transaction that records the
status change; the :class:`Dispatcher` delivers it in the background, retrying on the schedule
in :mod:`bridge.webhooks.schedule`.
"""

from bridge.webhooks.delivery import AttemptResult, HttpSender, Sender, classify
from bridge.webhooks.dispatcher import Dispatcher
from bridge.webhooks.events import (
    TEST_EVENT_TYPE,
    WebhookEvent,
    chat_message,
    event_id,
    event_type,
    is_backfill,
    ping_event,
    should_notify,
    status_event,
)
from bridge.webhooks.outbox import (
    Delivery,
    DueDelivery,
    disable_target,
    due,
    enable_target,
    enqueue,
    enqueue_change,
    pending_count,
    recent,
    record_attempt,
    replay,
    webhook_deliveries,
    webhook_events,
    webhook_target_state,
)
from bridge.webhooks.ping import send_test
from bridge.webhooks.schedule import DEFAULT_DELAYS, RetrySchedule, parse_retry_after
from bridge.webhooks.signing import USER_AGENT, sign, signed_headers
from bridge.webhooks.ssrf import TargetRefused, TargetUnresolved, check_url, refusal_reason
from bridge.webhooks.targets import (
    ChatTarget,
    Target,
    Targets,
    WebhookTarget,
    targets_from_settings,
)

__all__ = [
    "DEFAULT_DELAYS",
    "TEST_EVENT_TYPE",
    "USER_AGENT",
    "AttemptResult",
    "ChatTarget",
    "Delivery",
    "Dispatcher",
    "DueDelivery",
    "HttpSender",
    "RetrySchedule",
    "Sender",
    "Target",
    "TargetRefused",
    "TargetUnresolved",
    "Targets",
    "WebhookEvent",
    "WebhookTarget",
    "chat_message",
    "check_url",
    "classify",
    "disable_target",
    "due",
    "enable_target",
    "enqueue",
    "enqueue_change",
    "event_id",
    "event_type",
    "is_backfill",
    "parse_retry_after",
    "pending_count",
    "ping_event",
    "recent",
    "record_attempt",
    "refusal_reason",
    "replay",
    "send_test",
    "should_notify",
    "sign",
    "signed_headers",
    "status_event",
    "targets_from_settings",
    "webhook_deliveries",
    "webhook_events",
    "webhook_target_state",
]
