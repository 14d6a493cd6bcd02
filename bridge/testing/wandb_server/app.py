"""Requests in, responses out: routing, faults and request recording; no sockets here.

Routes: `POST /graphql`, `POST /files/{entity}/{project}/{run}/file_stream`, `PUT|GET /storage/...`
(the upload URLs this server hands out), and `/_test/...` (see `readapi`). Faults apply to all but
`/_test`. Bodies may be gzip-encoded.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from bridge.httpserve import Request, Response
from bridge.testing.wandb_server import artifact_ops, public_ops, readapi, sdk_ops
from bridge.testing.wandb_server.faults import Faults
from bridge.testing.wandb_server.graphql import Context, Handler, execute, operation_name
from bridge.testing.wandb_server.messages import Recorded
from bridge.testing.wandb_server.runs import apply_file_stream

HANDLERS: dict[str, Handler] = {
    **sdk_ops.HANDLERS,
    **artifact_ops.HANDLERS,
    **public_ops.HANDLERS,
}


class App:
    """The W&B server, minus the HTTP."""

    def __init__(
        self,
        context: Context,
        faults: Faults,
        control: Callable[[str, dict[str, Any]], None],
        record: bool = False,
    ) -> None:
        self.context = context
        self.faults = faults
        self.control = control  # lifecycle commands from `POST /_test/...`
        self.record = record
        self.requests: list[Recorded] = []
        self.operations: list[str] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        path = unquote(urlsplit(request.target).path)
        self.context.store.mark_silent_runs()
        if path.startswith("/_test/"):
            return readapi.handle(self, request.method, path, request.body)
        stall, status = self.faults.draw()
        if stall:
            time.sleep(stall)
        if status is not None:
            return Response.json(status, {"errors": [{"message": f"injected {status}"}]})
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return self._serve(request.method, path, body)

    def _serve(self, method: str, path: str, body: bytes) -> Response:
        parts = path.strip("/").split("/")
        if (method, path) == ("POST", "/graphql"):
            payload = _json(body)
            name = operation_name(payload)
            self._note(method, path, name, payload)
            return Response.json(200, execute(HANDLERS, self.context, payload))
        if (
            method == "POST"
            and len(parts) == 5
            and parts[0] == "files"
            and parts[4] == "file_stream"
        ):
            payload = _json(body)
            self._note(method, path, None, payload)
            return self._file_stream(parts[1], parts[2], parts[3], payload)
        if path.startswith("/storage/"):
            self._note(method, path, None, len(body))
            if method == "PUT":
                artifact_ops.store_upload(self.context, path, body)
                return Response(200, b"")
            if method == "GET":
                with self.context.store.lock:
                    blob = self.context.store.blobs.get(path)
                if blob is not None:
                    return Response(200, blob, "application/octet-stream")
        self._note(method, path, None, None)
        return Response.json(404, {"error": f"no route for {method} {path}"})

    def _file_stream(self, entity: str, project: str, run_id: str, body: Any) -> Response:
        store = self.context.store
        with store.change():
            run, _ = store.ensure_run(entity, project, run_id)
            apply_file_stream(run, body if isinstance(body, dict) else {}, time.time())
        return Response.json(200, {})

    def _note(self, method: str, path: str, operation: str | None, body: Any) -> None:
        with self._lock:
            if operation is not None:
                self.operations.append(operation)
            if self.record:
                self.requests.append(Recorded(method, path, operation, body))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {}
