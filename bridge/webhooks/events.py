"""Status change -> webhook event, and webhook event -> chat message. Pure: no I/O.

The envelope is OpenAI's own (``{"id", "object": "event", "type", "created_at", "data"}``),
so ``client.webhooks.verify_signature`` and ``unwrap`` accept our deliveries. The event id is
derived from (job id, per-job change number, status): a replay or a restart after a crash
makes the same id, and receivers can de-duplicate on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import limits, mapping
from bridge.ports import StatusChange

Json = dict[str, Any]

EVENT_PREFIX = "fine_tuning.job."
TEST_EVENT_TYPE = "fine_tuning.job.test"


@dataclass(frozen=True)
class WebhookEvent:
    """One event, as sent: its body is the same bytes on every attempt."""

    id: str
    type: str
    created_at: int
    data: Json = field(default_factory=dict)

    def envelope(self) -> Json:
        return {
            "id": self.id,
            "object": "event",
            "type": self.type,
            "created_at": self.created_at,
            "data": self.data,
        }

    def body(self) -> bytes:
        """Compact ASCII JSON; what is signed and sent."""
        return json.dumps(self.envelope(), separators=(",", ":"), default=str).encode("ascii")

    @classmethod
    def from_body(cls, body: bytes | str) -> WebhookEvent:
        envelope = json.loads(body)
        return cls(
            id=str(envelope["id"]),
            type=str(envelope["type"]),
            created_at=int(envelope["created_at"]),
            data=dict(envelope.get("data") or {}),
        )

    @property
    def is_test(self) -> bool:
        return self.type == TEST_EVENT_TYPE


def event_type(status: str) -> str:
    """``fine_tuning.job.<status>``; an unknown status is kept, reduced to ``[a-z_]``."""
    cleaned = re.sub(r"[^a-z_]+", "_", status.strip().lower()).strip("_")
    return EVENT_PREFIX + (cleaned or "unknown")


def event_id(job_id: str, seq: int, status: str) -> str:
    """The same inputs always give the same id (``evt_`` + 32 hex characters)."""
    digest = hashlib.sha256(f"{job_id}\x00{seq}\x00{status}".encode()).hexdigest()
    return "evt_" + digest[:32]


def is_backfill(change: StatusChange) -> bool:
    """A job first seen already terminal (a fresh install, a backfill): by default nothing is
    sent for it (``FTBRIDGE_NOTIFY_BACKFILL`` turns this on)."""
    return change.previous is None and mapping.is_terminal(change.current)


def should_notify(change: StatusChange, *, notify_backfill: bool) -> bool:
    return notify_backfill or not is_backfill(change)


def status_event(
    change: StatusChange,
    *,
    seq: int,
    run_url: str | None,
    created_at: int,
    source: str | None = None,
) -> WebhookEvent:
    """The event for one observed status change; ``seq`` numbers the job's changes."""
    return WebhookEvent(
        id=event_id(change.job_id, seq, change.current),
        type=event_type(change.current),
        created_at=created_at,
        data=job_data(change, run_url=run_url, source=source),
    )


def job_data(change: StatusChange, *, run_url: str | None, source: str | None = None) -> Json:
    """What a receiver needs without calling the API back; every string is cut to
    ``limits.MAX_OUT_TEXT`` characters (the cut said in it)."""
    job = change.job
    created, finished = _int(job.get("created_at")), _int(job.get("finished_at"))
    data: Json = {
        "id": change.job_id,
        "status": change.current,
        "previous_status": change.previous,
        "provider": mapping.provider_of(job),
        "provider_status": job.get("provider_status") or change.current,
        "model": job.get("model"),
        "fine_tuned_model": job.get("fine_tuned_model"),
        "error": job_error(job.get("error")),
        "trained_tokens": job.get("trained_tokens"),
        "metadata": job.get("metadata") or None,
        "wandb_run_url": run_url,
        "created_at": created,
        "finished_at": finished,
        "duration_seconds": finished - created
        if created is not None and finished is not None
        else None,
    }
    if source is not None:
        data["source"] = source
    return dict(limits.cap_text(data))


def job_error(error: object) -> Json | None:
    """The job's error, or None: a job that has not failed may carry an all-null error."""
    if not isinstance(error, Mapping) or not (error.get("code") or error.get("message")):
        return None
    return {"code": error.get("code"), "message": error.get("message"), "param": error.get("param")}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Chat messages
def chat_message(event: WebhookEvent) -> tuple[str, str]:
    """(title, body): short text for people."""
    data = event.data
    job_id = data.get("id") or "?"
    status = data.get("status") or event.type.removeprefix(EVENT_PREFIX)
    if event.is_test:
        return "ftbridge test notification", "A test from ftbridge: this target is reachable."
    title = f"Fine-tune {job_id} {status}"
    lines = [f"Job: {job_id}", f"Model: {data.get('model') or '?'}"]
    previous = data.get("previous_status")
    lines.append(f"Status: {previous} -> {status}" if previous else f"Status: {status}")
    duration = data.get("duration_seconds")
    if isinstance(duration, int | float):
        lines.append(f"Duration: {format_duration(duration)}")
    if data.get("fine_tuned_model"):
        lines.append(f"Fine-tuned model: {data['fine_tuned_model']}")
    error = data.get("error")
    if isinstance(error, Mapping):
        lines.append(f"Error: {error.get('code') or 'error'}: {error.get('message') or ''}".strip())
    if data.get("wandb_run_url"):
        final = data.get("run_final") is not False
        pending = "" if final else " (not final yet: W&B did not answer in time)"
        lines.append(f"W&B run: {data['wandb_run_url']}{pending}")
    line_limit = limits.MAX_CHAT_TEXT // 4
    body = "\n".join(limits.truncate(line, line_limit) for line in lines)
    return limits.truncate(title, 250), limits.truncate(body, limits.MAX_CHAT_TEXT)


def chat_severity(event: WebhookEvent) -> str:
    """An Apprise notify type: success, failure, warning or info."""
    status = event.data.get("status")
    return {"succeeded": "success", "failed": "failure", "cancelled": "warning"}.get(
        str(status), "info"
    )


def format_duration(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def ping_event(*, created_at: int, nonce: str) -> WebhookEvent:
    """A signed ping for ``ftbridge webhooks test``; filters do not apply to it."""
    return WebhookEvent(
        id=event_id("ftbridge-test", 0, nonce),
        type=TEST_EVENT_TYPE,
        created_at=created_at,
        data={"id": "ftjob-test", "status": "test", "message": "A test from ftbridge."},
    )
