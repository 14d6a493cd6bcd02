"""`WandbServer`: the W&B test server in a background thread, its lifecycle and its faults.

The port stays the same for the server's whole life: `refuse_connections()` closes the listening
socket (clients get "connection refused") and `accept_connections()`, like `restart()`, binds the
same port again. With a `data_dir`, state survives a restart and a new process.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from bridge.httpserve import Request, Response, TrackedServer, serve_in_thread, stop_serving
from bridge.testing.wandb_server.app import App
from bridge.testing.wandb_server.faults import Faults
from bridge.testing.wandb_server.graphql import Context
from bridge.testing.wandb_server.messages import Recorded
from bridge.testing.wandb_server.runs import ArtifactRecord, RunRecord
from bridge.testing.wandb_server.store import Store

# wandb accepts a key whose part after the first "-" is 40+ word characters
# (wandb/sdk/lib/wbauth/validation.py).
API_KEY = "local-" + "ftbridge0test0key0" + "0" * 22
DEFAULT_ENTITY = "ftbridge-tests"


class HttpServer(TrackedServer):
    """Serves one `App`; `close_connections` drops kept-alive clients on stop."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ftbridge-wandb-server"
    sys_version = ""
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        request = Request(
            method=self.command,
            target=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body(),
        )
        self._send(cast(HttpServer, self.server).app.handle(request))

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("content-type", response.content_type)
        self.send_header("content-length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server records requests instead of logging them."""


class WandbServer:
    """A W&B server for tests: `wandb` (online) and `wandb sync` talk to `url`.

    `port=0` picks a free port once; it is kept across restarts. `data_dir` persists the state
    as JSON. `crash_after` (seconds) turns a running run that has sent nothing for that long
    into a `crashed` one, as W&B does (wandb-core sends a heartbeat every 30 s). `record=True`
    keeps every request in `requests`.
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | str | None = None,
        entity: str = DEFAULT_ENTITY,
        *,
        host: str = "127.0.0.1",
        record: bool = False,
        crash_after: float | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.entity = entity
        self.api_key = API_KEY
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.faults = Faults()
        self.crash_after = crash_after
        self._store = Store(self.data_dir, crash_after)
        self._context = Context(self._store, entity, "")
        self._app = App(self._context, self.faults, self._control, record)
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # lifecycle

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("server already started")
            self._bind()

    def stop(self) -> None:
        """Stop serving and drop open connections (the state is kept)."""
        with self._lifecycle:
            self._unbind()

    def restart(self) -> None:
        """Stop, then serve again on the same port; with a `data_dir`, reload the state from it."""
        with self._lifecycle:
            self._unbind()
            if self.data_dir is not None:
                self._store = Store(self.data_dir, self.crash_after)
                self._context.store = self._store
            self._bind()

    def refuse_connections(self) -> None:
        """Close the listening socket: connecting fails until `accept_connections()`."""
        self.stop()

    def accept_connections(self) -> None:
        """Listen again on the same port (no-op when listening)."""
        with self._lifecycle:
            if self._server is None:
                self._bind()

    def _bind(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                server = HttpServer((self.host, self._port), self._app)
                break
            except OSError:
                if self._port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._server = server
        self._port = server.server_address[1]
        self._context.base_url = self.url
        self._thread = serve_in_thread(server, "wandb-test-server")

    def _unbind(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        stop_serving(server, self._thread)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    # faults

    def stall(self, seconds: float) -> None:
        """Every request waits `seconds` before it is answered (0: off)."""
        self.faults.stall(seconds)

    def fail(self, status: int = 500, count: int | None = None) -> None:
        """Answer `status` to the next `count` requests (None: until `clear_faults()`)."""
        self.faults.fail(status, count)

    def clear_faults(self) -> None:
        """No stall, no failures; connections accepted again."""
        self.faults.clear()
        self.accept_connections()

    def _control(self, command: str, options: dict[str, Any]) -> None:
        """Commands from `POST /_test/...`; socket changes run after the answer is sent."""
        if command == "faults":
            self.faults.clear()
            self.stall(float(options.get("stall") or 0))
            if options.get("status") is not None:
                count = options.get("count")
                self.fail(int(options["status"]), None if count is None else int(count))
            return
        seconds = float(options.get("seconds") or 0)

        def later() -> None:
            time.sleep(0.2)
            if command == "restart":
                self.restart()
                return
            self.refuse_connections()
            time.sleep(seconds)
            self.accept_connections()

        threading.Thread(target=later, name="wandb-test-server-control", daemon=True).start()

    # what the server holds

    def run(self, run_id: str, project: str, entity: str | None = None) -> RunRecord | None:
        """A snapshot of the run `entity/project/run_id` (entity: the server's), or None."""
        self._store.mark_silent_runs()
        with self._store.lock:
            return copy.deepcopy(self._store.run(entity or self.entity, project, run_id))

    def artifact(self, ident: str) -> ArtifactRecord | None:
        """A snapshot of one artifact version by its id (as in a run's ``used_artifacts``)."""
        with self._store.lock:
            return copy.deepcopy(self._store.artifact(ident))

    def runs(self) -> list[RunRecord]:
        """A snapshot of every run."""
        self._store.mark_silent_runs()
        with self._store.lock:
            return copy.deepcopy(list(self._store.runs.values()))

    @property
    def unknown_operations(self) -> list[str]:
        """Names of GraphQL operations the server had no answer for, in order received."""
        with self._store.lock:
            return list(self._context.unknown_operations)

    @property
    def operations(self) -> list[str]:
        """Names of all GraphQL operations received, in order."""
        return list(self._app.operations)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received (only with `record=True`)."""
        return list(self._app.requests)
