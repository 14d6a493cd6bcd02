"""The health server and the container's health probe.

One small HTTP server in a background thread (off unless ``FTBRIDGE_HTTP_PORT`` is set):

- ``/healthz``: the process is alive (always 200 while it serves).
- ``/readyz``: 200 when the state store answers and the last successful poll cycle is recent;
  503 with a JSON ``reason`` otherwise.
- ``/metrics``: the Prometheus text of :class:`bridge.metrics.BridgeMetrics`.
- ``/``: the status page (:class:`bridge.views.page.StatusPage`), only when one is given
  (``FTBRIDGE_STATUS_PAGE=true``); 404 otherwise.

The server knows nothing of the engine: it is given the metrics registry and a readiness
callable (:class:`CycleReadiness` is the daemon's). It holds no socket for long: a request must
arrive whole within ``REQUEST_SECONDS`` (a slow-loris client is cut off), at most
``MAX_CONNECTIONS`` are served at once (more are closed at once), one request per connection,
and a client that hangs up is a debug line, never a traceback. :func:`probe` is what the container's
``HEALTHCHECK`` runs (``ftbridge health`` or ``python -m bridge.health``): GET ``/readyz``,
exit 0 or 1 with one line saying why.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bridge.errors import BridgeError, StoreError

log = structlog.get_logger(__name__)

#: Added to three poll intervals before a quiet poll loop counts as stuck.
READY_GRACE_SECONDS = 60.0
PROBE_TIMEOUT = 5.0
#: Seconds a client has to send its whole request, and connections served at once.
REQUEST_SECONDS = 5.0
MAX_CONNECTIONS = 16
#: The body of a probe's answer read at most (a readiness answer is a few hundred bytes).
_PROBE_BODY_LIMIT = 65_536
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True)
class Verdict:
    """What ``/readyz`` answers."""

    ready: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unready",
            "reason": self.reason,
            **self.detail,
        }


Readiness = Callable[[], Verdict]
#: The status page: given the request's Authorization header, answers (status, body, headers).
Page = Callable[[str | None], tuple[int, bytes, dict[str, str]]]


def max_cycle_age(poll_interval: float, grace: float = READY_GRACE_SECONDS) -> float:
    """How old the last successful cycle may be while the bridge is still ready."""
    return 3 * poll_interval + grace


class CycleReadiness:
    """Ready while ``ping`` succeeds and ``last_success()`` (Unix time of the last successful
    poll cycle, None before the first) is at most ``max_age`` seconds old."""

    def __init__(
        self,
        ping: Callable[[], None],
        last_success: Callable[[], float | None],
        max_age: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ping = ping
        self._last_success = last_success
        self.max_age = max_age
        self._clock = clock

    def __call__(self) -> Verdict:
        try:
            self._ping()
        except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
            return Verdict(False, f"state store unreachable: {_one_line(error)}")
        last = self._last_success()
        if last is None:
            return Verdict(False, "no poll cycle has succeeded yet")
        age = max(0.0, self._clock() - last)
        detail = {"last_success_age_seconds": round(age, 1), "max_age_seconds": self.max_age}
        if age > self.max_age:
            reason = f"last successful poll cycle {age:.0f} s ago (limit {self.max_age:.0f} s)"
            return Verdict(False, reason, detail)
        return Verdict(True, "ok", detail)


def store_ping(engine: sa.Engine) -> None:
    """The state store answers a query; a SQLite file must still be where it was (a process
    holding a deleted file open would otherwise write into nothing). Raises StoreError."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        if not path.exists():
            raise StoreError(f"the SQLite file {path} is gone")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        raise StoreError(_one_line(getattr(error, "orig", None) or error)) from None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class _DeadlineReader(io.RawIOBase):
    """A socket read that must be done by a deadline: each read waits only for what is
    left of it, so that a client sending one byte at a time cannot hold the connection."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        readiness: Readiness,
        page: Page | None = None,
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.page = page
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.turned_away = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            if self.turned_away == 1 or self.turned_away % 1000 == 0:
                log.warning("health.too_many_connections", limit=MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, never a traceback into the logs; a client gone is only a debug line."""
        error = sys.exc_info()[1]
        if isinstance(error, _CLIENT_GONE):
            log.debug("health.client_gone", error=type(error).__name__)
        else:
            log.warning("health.request_failed", error=_one_line(error or Exception()))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ftbridge"
    sys_version = ""
    timeout = REQUEST_SECONDS

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + REQUEST_SECONDS
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path == "/readyz":
            self._ready()
        elif path == "/metrics":
            self._metrics()
        elif path == "/" and self.server.page is not None:
            self._page(self.server.page)
        else:
            self._json(
                HTTPStatus.NOT_FOUND, {"error": "not found: try /healthz, /readyz, /metrics"}
            )

    def _ready(self) -> None:
        try:
            verdict = self.server.readiness()
        except Exception as error:  # noqa: BLE001 - an answer, never a dropped connection
            verdict = Verdict(False, f"readiness check failed: {_one_line(error)}")
        status = HTTPStatus.OK if verdict.ready else HTTPStatus.SERVICE_UNAVAILABLE
        self._json(status, verdict.body())

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(HTTPStatus.OK, encoder(self.server.registry), content_type)

    def _page(self, page: Page) -> None:
        try:
            status, body, headers = page(self.headers.get("Authorization"))
        except Exception as error:  # noqa: BLE001 - an answer, never a dropped connection
            log.warning("health.status_page_failed", error=_one_line(error))
            status, body, headers = HTTPStatus.INTERNAL_SERVER_ERROR, b"status page failed\n", {}
        kind = "text/html; charset=utf-8" if status == HTTPStatus.OK else "text/plain"
        self._send(HTTPStatus(status), body, kind, headers)

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.connection.settimeout(REQUEST_SECONDS)  # a client that does not read
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", line=format % args)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` (port 0: any free port), and
    ``/`` when given a status ``page``."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Readiness,
        *,
        page: Page | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self._registry = registry
        self._readiness = readiness
        self._page = page
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen and serve in a daemon thread; raises BridgeError (one line) when the port
        cannot be had."""
        if self._server is not None:
            return
        try:
            server = _Server(
                (self.host, self.requested_port), self._registry, self._readiness, self._page
            )
        except OSError as error:
            raise BridgeError(
                f"health server cannot listen on {self.host}:{self.requested_port}: "
                f"{error.strerror or error}"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.2,), name="ftbridge-health", daemon=True
        )
        self._thread.start()
        log.info("health.listening", host=self.host, port=self.port)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when 0 was asked for)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{local_host(self.host)}:{self.port}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def local_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def readyz_url(host: str, port: int) -> str:
    return f"http://{local_host(host)}:{port}/readyz"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the health endpoint (only http and https), or None."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"{url!r} is not an http:// or https:// URL"
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"{url!r} has no valid port"
    return None


def probe(url: str, *, timeout: float = PROBE_TIMEOUT) -> int:
    """GET ``url`` (``/readyz``); 0 when it answers 200 with the bridge's readiness answer,
    else 1 with one line on stderr."""
    problem = url_problem(url)
    if problem is not None:
        print(f"ftbridge: {problem}", file=sys.stderr)
        return 2
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(_PROBE_BODY_LIMIT)
        if not _is_ready_answer(body):
            print(
                f"ftbridge: {url} answered, but not with the bridge's readiness answer "
                '({"status": "ready", ...}): is it the /readyz of ftbridge?',
                file=sys.stderr,
            )
            return 1
        return 0
    except urllib.error.HTTPError as error:
        reason = _reason_of(error.read(_PROBE_BODY_LIMIT)) or f"HTTP {error.code}"
        print(f"ftbridge: not ready: {reason}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", None) or error
        print(f"ftbridge: health endpoint {url} does not answer: {why}", file=sys.stderr)
    return 1


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer of its own (not followed): the bridge never sends one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _is_ready_answer(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("status") == "ready"


def _reason_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return str(reason) if reason else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.health [URL]``: the light probe (no W&B or OpenAI imports), for a
    container's HEALTHCHECK. Without URL, ``/readyz`` of the port the settings name."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m bridge.health [URL]  (default: /readyz on FTBRIDGE_HTTP_PORT)")
        return 0
    if args:
        return probe(args[0])
    from bridge.settings import load_settings  # noqa: PLC0415 - only when no URL is given

    try:
        settings = load_settings()
    except BridgeError as error:
        print(f"ftbridge: configuration error: {error}", file=sys.stderr)
        return 1
    if settings.http_port is None:
        print("ftbridge: the health server is off (set FTBRIDGE_HTTP_PORT)", file=sys.stderr)
        return 1
    return probe(readyz_url(settings.http_host, settings.http_port))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
