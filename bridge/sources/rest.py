"""JSON over HTTP for the sources read without an SDK: one ``httpx`` client per source, every
request with a timeout, a bounded number of retries, and every failure as a
:mod:`bridge.errors` error (never an ``httpx`` exception, never a traceback).

The rules:

- a connection error, a timeout, 408, 409, 429 and 5xx are tried again, at most
  ``max_retries`` times, after ``Retry-After`` (when it is short) or a short doubling pause;
  the stop event ends the wait at once (:class:`bridge.errors.Interrupted`);
- what is still failing after that is :class:`bridge.errors.SourceUnavailable` (retryable; the
  server's ``Retry-After`` kept as ``retry_after``), and so is any other 4xx and an answer that
  is not a JSON object;
- 401 and 403 are :class:`bridge.errors.SourceRejected` (the key was refused);
- 404 is :class:`bridge.errors.JobNotFound`, or what the caller says a 404 means.

The API key goes in the ``Authorization`` header only, and is never logged.
"""

from __future__ import annotations

import json
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from bridge import __version__
from bridge.errors import (
    BridgeError,
    Interrupted,
    JobNotFound,
    SourceRejected,
    SourceUnavailable,
)

log = structlog.get_logger(__name__)
Json = dict[str, Any]

#: The longest pause between two tries of one request; a longer ``Retry-After`` is left to
#: the daemon's back-off (the error carries it).
MAX_RETRY_WAIT = 10.0
FIRST_RETRY_WAIT = 0.5
_RETRIED = frozenset({408, 409, 429})
_SHOWN_TEXT = 200


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _message(response: httpx.Response) -> str:
    """The API's own error message, cut short, or nothing."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    text = error.get("message") if isinstance(error, dict) else error
    if not isinstance(text, str):
        text = body.get("message") if isinstance(body, dict) else None
    return f": {text[:_SHOWN_TEXT]}" if isinstance(text, str) and text else ""


class JsonApi:
    """A JSON API at ``base_url``, read with a Bearer key. ``key_hint`` names where the key
    comes from (for the message when it is refused)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        max_retries: int,
        key_hint: str = "the API key",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.key_hint = key_hint
        # Set by the source to the bridge's stop event: a pause between tries ends with it.
        self.stopping: threading.Event | None = None
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"ftbridge/{__version__}",
            },
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def get(
        self,
        path: str,
        what: str,
        params: dict[str, Any] | None = None,
        *,
        missing: type[BridgeError] = JobNotFound,
    ) -> Json:
        """The JSON object at ``path``; a 404 raises ``missing``."""
        return _json_object(self._send("GET", path, what, params, missing), what)

    def post(
        self,
        path: str,
        what: str,
        *,
        missing: type[BridgeError] = JobNotFound,
        body: Json | None = None,
        retries: int | None = None,
    ) -> Json:
        """POST ``body`` as JSON; ``retries`` instead of the client's (0: a chat call, whose
        failure ends the samples)."""
        return _json_object(
            self._send("POST", path, what, None, missing, body=body, retries=retries), what
        )

    def content(self, path: str, what: str) -> bytes:
        """The bytes at ``path`` (a file's content)."""
        return self._send("GET", path, what, None, JobNotFound).content

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        params: dict[str, Any] | None,
        missing: type[BridgeError],
        *,
        body: Json | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        attempt = 0
        limit = self.max_retries if retries is None else retries
        while True:
            error, wait = self._try(method, path, what, (params, body), missing)
            if isinstance(error, httpx.Response):
                return error
            if wait is None or attempt >= limit:
                raise error
            attempt += 1
            self._pause(wait if wait >= 0 else FIRST_RETRY_WAIT * 2 ** (attempt - 1), what)

    def _try(
        self,
        method: str,
        path: str,
        what: str,
        query: tuple[dict[str, Any] | None, Json | None],
        missing: type[BridgeError],
    ) -> tuple[httpx.Response | BridgeError, float | None]:
        """The answer, or the error with how long to wait before trying again (-1: the
        default pause; None: not again). ``query``: the URL's parameters and a JSON body."""
        params, body = query
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            return SourceUnavailable(f"{what}: timed out"), -1
        except httpx.HTTPError as error:
            return SourceUnavailable(f"{what}: could not connect ({type(error).__name__})"), -1
        status = response.status_code
        if status < 300:
            return response, None
        text = _message(response)
        if status in (401, 403):
            return SourceRejected(
                f"{what}: HTTP {status}, the API key was refused (check {self.key_hint}){text}"
            ), None
        if status == 404:
            return missing(f"{what}: not found{text}"), None
        after = retry_after(response)
        unavailable = SourceUnavailable(f"{what}: HTTP {status}{text}", retry_after=after)
        if status in _RETRIED or status >= 500:
            wait = -1.0 if after is None else after
            return unavailable, (wait if wait <= MAX_RETRY_WAIT else None)
        return unavailable, None

    def _pause(self, seconds: float, what: str) -> None:
        if self.stopping is None:
            time.sleep(seconds)
        elif self.stopping.wait(seconds):
            raise Interrupted(f"{what}: stopped")


def _json_object(response: httpx.Response, what: str) -> Json:
    try:
        body = json.loads(response.content)
    except ValueError:
        raise SourceUnavailable(f"{what}: the answer is not JSON") from None
    except RecursionError:
        raise SourceUnavailable(f"{what}: the answer is JSON nested too deep") from None
    if not isinstance(body, dict):
        raise SourceUnavailable(f"{what}: the answer is not a JSON object")
    return body
