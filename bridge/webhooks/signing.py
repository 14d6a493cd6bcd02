"""Standard Webhooks signatures (the scheme OpenAI's webhooks use).

``webhook-signature`` holds one ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per secret,
space-separated: during a rotation both the old and the new secret sign, and a receiver that
knows either accepts the delivery.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from bridge import __version__

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
MIN_SECRET_BYTES = 16
USER_AGENT = f"ftbridge/{__version__}"


def secret_problem(secret: str) -> str | None:
    """What is wrong with a secret, in words that never repeat it; None when it is fine."""
    if not secret.startswith(SECRET_PREFIX):
        return "secret must start with 'whsec_'"
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return "secret must be 'whsec_' followed by standard base64 (with its '=' padding)"
    if len(key) < MIN_SECRET_BYTES:
        return f"secret must hold at least {MIN_SECRET_BYTES} bytes after base64 decoding"
    return None


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,...`` per secret."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    text = body.decode("utf-8")
    return " ".join(Webhook(secret).sign(msg_id, when, text) for secret in secrets)


def signed_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header of one attempt; the timestamp is the attempt's, the id the event's."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
