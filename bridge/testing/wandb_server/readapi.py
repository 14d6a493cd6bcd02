"""`/_test/...`: read the state and steer the server over HTTP, for a server in another process.

GET  /_test/runs                          every run (without its file lines)
GET  /_test/runs/{entity}/{project}/{run}  one run: its record plus `history`, `summary` ...
GET  /_test/operations                    GraphQL operations received, and the unknown ones
POST /_test/faults                        {"stall": s, "status": 500, "count": n} or {} to clear
POST /_test/refuse                        {"seconds": s}: refuse connections for s seconds
POST /_test/restart                       stop and start again on the same port

This API is never faulted and never recorded.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bridge.httpserve import Response
from bridge.testing.wandb_server.runs import RunRecord

if TYPE_CHECKING:
    from bridge.testing.wandb_server.app import App


def run_view(run: RunRecord, full: bool) -> dict[str, Any]:
    """A run as JSON; `full` adds its lines and the rows parsed from them."""
    data = run.to_json()
    del data["files"]
    data["history_line_count"] = run.line_count("wandb-history.jsonl")
    data["last_step"] = run.last_step
    if full:
        data["files"] = {name: run.lines(name) for name in run.files}
        data["history"] = run.history
    return data


def handle(app: App, method: str, path: str, body: bytes) -> Response:
    store = app.context.store
    parts = path.strip("/").split("/")[1:]
    if method == "GET" and parts == ["runs"]:
        with store.lock:
            runs = [run_view(r, full=False) for r in store.runs.values()]
        return Response.json(200, runs)
    if method == "GET" and len(parts) == 4 and parts[0] == "runs":
        with store.lock:
            run = store.run(parts[1], parts[2], parts[3])
            view = None if run is None else run_view(run, full=True)
        return Response.json(200 if view else 404, view or {"error": "no such run"})
    if method == "GET" and parts == ["operations"]:
        with store.lock:
            unknown = list(app.context.unknown_operations)
        return Response.json(200, {"operations": list(app.operations), "unknown": unknown})
    if method == "POST" and len(parts) == 1 and parts[0] in ("faults", "refuse", "restart"):
        try:
            command = json.loads(body or b"{}")
            app.control(parts[0], command if isinstance(command, dict) else {})
        except (ValueError, TypeError) as error:
            return Response.json(400, {"error": str(error)})
        return Response.json(200, app.faults.state.as_json())
    return Response.json(404, {"error": f"no route for {method} {path}"})
