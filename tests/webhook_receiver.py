"""A real HTTP receiver for the webhook tests: records every request and verifies every signed
one with both the ``openai`` SDK and the ``standardwebhooks`` package."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import standardwebhooks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_c2VjcmV0LWZvci1yb3RhdGlvbi10ZXN0cy0xMjM0"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool
    problem: str | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


def verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Raises unless both libraries accept the delivery (and ``unwrap`` parses it)."""
    client = openai.OpenAI(api_key="x", webhook_secret=secret, base_url="http://127.0.0.1:9")
    client.webhooks.verify_signature(body, headers)
    client.webhooks.unwrap(body, headers)
    standardwebhooks.Webhook(secret).verify(body, headers)


def free_port() -> int:
    """A port nobody listens on now (to start a receiver on later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """``Receiver(secrets, replies=[Reply(500), ...])``: answers the replies in order, then
    ``default``. With no secrets, requests are recorded without verification (Apprise)."""

    def __init__(
        self,
        secrets: Sequence[str] = (SECRET,),
        *,
        replies: Sequence[Reply] = (),
        default: Reply | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.secrets = list(secrets)
        self.host = host
        self._replies = list(replies)
        self._default = default or Reply()
        self._lock = threading.Lock()
        self.released = threading.Event()
        self.received: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/hook"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} requests, got {len(self.received)}")

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.pop(0) if self._replies else self._default

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        problem = None
        for secret in self.secrets:
            try:
                verify(secret, body, headers)
            except Exception as error:  # noqa: BLE001 - recorded and asserted on by the tests
                problem = f"{type(error).__name__}: {error}"
        received = Received(path, headers, body, time.monotonic(), problem is None, problem)
        with self._lock:
            self.received.append(received)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(self.path, headers, body)
                reply = receiver._next_reply()
                if reply.delay:
                    receiver.released.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


class FakeClock:
    """Starts at the real time (signatures must stay within 5 minutes of it) and only moves
    when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
