"""One delivery attempt, and what it means.

- ``delivered``: a 2xx answer.
- ``retry``: a network error, a timeout, a 3xx (redirects are not followed), 429, 5xx or any
  other answer; ``retry_after`` carries the server's ``Retry-After``.
- ``disable``: 410 Gone; the target is disabled until enabled again.
- ``refused``: the SSRF guard refused the target's address; never retried. Chat targets go
  through the same rule where Apprise connects (:mod:`bridge.webhooks.egress`).
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx
import structlog

from bridge.webhooks.egress import guarded
from bridge.webhooks.events import WebhookEvent, chat_message, chat_severity
from bridge.webhooks.schedule import parse_retry_after
from bridge.webhooks.signing import signed_headers
from bridge.webhooks.ssrf import (
    Resolver,
    TargetRefused,
    TargetUnresolved,
    check_url,
    pinned_request,
    system_resolver,
)
from bridge.webhooks.targets import ChatTarget, WebhookTarget

Outcome = Literal["delivered", "retry", "disable", "refused"]

log = structlog.get_logger(__name__)

_ERROR_BODY_LIMIT = 200


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    duration: float = 0.0
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


class Sender(Protocol):
    """Makes one attempt; never raises for a failed delivery."""

    def send_webhook(self, target: WebhookTarget, event_id: str, body: bytes) -> AttemptResult: ...

    def send_chat(self, target: ChatTarget, event: WebhookEvent) -> AttemptResult: ...


def classify(status: int, retry_after: float | None = None) -> AttemptResult:
    """The outcome of an HTTP answer (without duration or error text)."""
    if 200 <= status < 300:
        return AttemptResult("delivered", status)
    if status == 410:
        return AttemptResult("disable", status, "410 Gone: the receiver asked to stop")
    kind = "redirect (not followed)" if 300 <= status < 400 else f"HTTP {status}"
    return AttemptResult("retry", status, kind, retry_after=retry_after)


class HttpSender:
    """Signed webhook POSTs over httpx, pinned to the address the SSRF guard checked, and chat
    messages through Apprise.

    ``timeout`` bounds each phase of an attempt (connect, write, each read); ``clock`` gives
    the signature's timestamp (the attempt's time, as Standard Webhooks asks)."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_private: bool = False,
        resolve: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self._resolve = resolve
        self._clock = clock
        self._client = httpx.Client(
            timeout=timeout, follow_redirects=False, trust_env=False, verify=verify
        )

    def close(self) -> None:
        self._client.close()

    def send_webhook(self, target: WebhookTarget, event_id: str, body: bytes) -> AttemptResult:
        started = time.monotonic()
        result = self._attempt(target, event_id, body)
        return _with_duration(result, time.monotonic() - started)

    def _attempt(self, target: WebhookTarget, event_id: str, body: bytes) -> AttemptResult:
        try:
            checked = check_url(target.url, allow_private=self.allow_private, resolve=self._resolve)
        except TargetRefused as error:
            return AttemptResult("refused", error=str(error))
        except TargetUnresolved as error:
            return AttemptResult("retry", error=str(error))
        now = self._clock()
        headers = signed_headers(target.secret_values(), event_id, int(now), body)
        request = pinned_request(target.url, checked, headers=headers, content=body)
        try:
            response = self._client.send(request, stream=True)
            try:
                snippet = _read_some(response)
            finally:
                response.close()
        except httpx.TimeoutException:
            return AttemptResult("retry", error=f"timed out after {self.timeout:g}s")
        except httpx.HTTPError as error:
            return AttemptResult("retry", error=f"{type(error).__name__}: {error}"[:300])
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        result = classify(response.status_code, retry_after)
        if result.outcome == "retry" and snippet:
            return dataclasses.replace(result, error=f"{result.error}: {snippet}")
        return result

    def send_chat(self, target: ChatTarget, event: WebhookEvent) -> AttemptResult:
        started = time.monotonic()
        result = _notify(target, event, allow_private=self.allow_private, timeout=self.timeout)
        return _with_duration(result, time.monotonic() - started)


def _notify(
    target: ChatTarget, event: WebhookEvent, *, allow_private: bool, timeout: float
) -> AttemptResult:
    import apprise  # noqa: PLC0415 - about 0.1 s to import, only where chat targets are sent to

    title, body = chat_message(event)
    notifier = apprise.Apprise()
    if not notifier.add(target.url.get_secret_value()):
        return AttemptResult("refused", error="not an Apprise URL this install supports")
    with guarded(allow_private=allow_private) as policy:
        try:
            sent = bool(
                notifier.notify(
                    body=body, title=title, notify_type=chat_severity(event), timeout=timeout
                )
            )
        except Exception as error:  # noqa: BLE001 - an Apprise plugin may raise anything
            sent = False
            failure = f"{type(error).__name__} from Apprise"
        else:
            failure = "Apprise could not send the notification"
    if policy.refused:
        return AttemptResult("refused", error=policy.refused[0])
    if sent:
        return AttemptResult("delivered")
    return AttemptResult("retry", error=failure)


def _read_some(response: httpx.Response) -> str:
    """The start of an error answer, for the delivery log; never the whole of a large body."""
    if 200 <= response.status_code < 300:
        return ""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= _ERROR_BODY_LIMIT:
            break
    return data[:_ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()


def _with_duration(result: AttemptResult, duration: float) -> AttemptResult:
    return dataclasses.replace(result, duration=duration)
