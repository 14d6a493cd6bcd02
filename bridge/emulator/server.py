"""HTTP plumbing: a threading stdlib server that hands requests to the `Api`."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

from bridge.emulator.api import Api
from bridge.httpserve import Request, Response, TrackedServer


class HttpServer(TrackedServer):
    """Serves one `Api`; `close_connections` drops kept-alive clients on stop."""

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        self.api = api
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ftbridge-emulator"
    sys_version = ""
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = Request(
            method=self.command,
            target=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        self._send(cast(HttpServer, self.server).api.handle(request))

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("content-type", response.content_type)
        self.send_header("content-length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator counts requests instead of logging them."""
