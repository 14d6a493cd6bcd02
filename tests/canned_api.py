"""A tiny HTTP server that answers the fine-tuning API's routes with whatever a test puts in
it, including things the real API should never send: for bad-input tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CannedAPI:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.hits: list[str] = []

    def put(self, path: str, body: Any, status: int = 200) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, raw)

    def jobs(self, *jobs: dict[str, Any]) -> None:
        self.put("/v1/fine_tuning/jobs", {"object": "list", "data": list(jobs), "has_more": False})
        for job in jobs:
            if "id" in job:
                self.put(f"/v1/fine_tuning/jobs/{job['id']}", job)

    def events(self, job_id: str, *events_newest_first: Any) -> None:
        body = {"object": "list", "data": list(events_newest_first), "has_more": False}
        self.put(f"/v1/fine_tuning/jobs/{job_id}/events", body)

    @contextmanager
    def serve(self) -> Iterator[str]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                api.hits.append(path)
                status, body = api.routes.get(path, (404, b'{"error":{"message":"no"}}'))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/v1"
        finally:
            server.shutdown()
            server.server_close()
