"""A hostile fine-tuning API: a real HTTP server (stdlib) answering the routes the bridge calls
(``/v1/fine_tuning/jobs``, ``/jobs/{id}``, ``/events``, ``/checkpoints``,
``/v1/files/{id}/content``) with what a broken or malicious provider could send, beside one
well-behaved job.

- the job listing never ends (``has_more: true``, the same page again);
- ``ftjob-endless``: its events page repeats forever; ``ftjob-cursor``: its checkpoints
  repeat the same cursor;
- ``ftjob-steps``: steps of 10**30, 2**63, -1, 1.5, "7", NaN and Infinity, values that are
  strings, nested, NaN and Infinity, and one good step;
- ``ftjob-odd``: an unknown status; ``../x``, ``a/b`` and a 300-character id;
- ``ftjob-big``: failed, with a 2 MB ``error.message``;
- ``ftjob-slow``: its events take ``slow_seconds`` to answer (they end early when the server
  stops);
- ``ftjob-badfile``: succeeded, its result file is neither CSV nor base64.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NOW = int(time.time())
BIG_MESSAGE = "x" * 2_000_000
LONG_ID = "ftjob-" + "l" * 294
BAD_IDS = ("../x", "a/b", LONG_ID)
GOOD_STEPS = (1, 2, 3)


def _job(job_id: str, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "model": "gpt-4o-mini-2024-07-18",
        "status": status,
        "created_at": NOW - 600,
        "finished_at": NOW - 60 if status in ("succeeded", "failed", "cancelled") else None,
        "fine_tuned_model": f"ft:{job_id}" if status == "succeeded" else None,
        "training_file": "file-train",
        "result_files": [],
        "trained_tokens": 1000,
        "error": None,
        **extra,
    }


def _metrics(event_id: str, step: Any, **values: Any) -> dict[str, Any]:
    data = {"step": step, "train_loss": 1.0, **values}
    return {
        "id": event_id,
        "object": "fine_tuning.job.event",
        "created_at": NOW - 100,
        "level": "info",
        "message": "",
        "type": "metrics",
        "data": data,
    }


def _good_events(prefix: str) -> list[dict[str, Any]]:
    return [_metrics(f"{prefix}-{step}", step, train_loss=1.0 / step) for step in GOOD_STEPS][::-1]


class HostileAPI:
    """Start with :meth:`start`, stop with :meth:`stop`; ``base_url`` ends in ``/v1``."""

    def __init__(self, *, slow_seconds: float = 10.0) -> None:
        self.slow_seconds = slow_seconds
        self.stopped = threading.Event()
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self.jobs = [
            _job("ftjob-good", result_files=["file-good"]),
            _job("ftjob-endless", "running"),
            _job("ftjob-cursor"),
            _job("ftjob-steps"),
            _job("ftjob-odd", "warming_up"),
            _job(
                "ftjob-big", "failed", error={"code": "boom", "message": BIG_MESSAGE, "param": None}
            ),
            _job("ftjob-slow", "running"),
            _job("ftjob-badfile", result_files=["file-bad"]),
            *(_job(job_id, "running") for job_id in BAD_IDS),
        ]
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # Answers
    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        parts = path.strip("/").split("/")
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
        if parts[:3] == ["v1", "fine_tuning", "jobs"]:
            return self._jobs(parts[3:], query)
        if parts[:2] == ["v1", "files"] and parts[-1] == "content":
            return self._file(parts[2])
        return 404, b'{"error": {"message": "no such route"}}'

    def _jobs(self, rest: list[str], query: dict[str, list[str]]) -> tuple[int, bytes]:
        if not rest:
            # Never ends: has_more, and the same page whatever the cursor.
            return 200, _page(self.jobs, has_more=True)
        job_id = rest[0]
        job = next((j for j in self.jobs if j["id"] == job_id), None)
        if job is None:
            return 404, b'{"error": {"message": "no such job"}}'
        if len(rest) == 1:
            return 200, _dumps(job)
        if rest[1] == "events":
            return self._events(job_id)
        if rest[1] == "checkpoints":
            return self._checkpoints(job_id, query)
        return 404, b"{}"

    def _events(self, job_id: str) -> tuple[int, bytes]:
        if job_id == "ftjob-endless":
            return 200, _page(_good_events("e"), has_more=True)
        if job_id == "ftjob-slow":
            self.stopped.wait(self.slow_seconds)
            return 200, _page(_good_events("s"), has_more=False)
        if job_id == "ftjob-steps":
            hostile = [  # newest first: oldest first they climb to steps 9 and 10
                {
                    "id": "h-created",
                    "type": "metrics",
                    "created_at": 10**30,
                    "data": {"step": 10, "train_loss": 0.5},
                },
                _metrics(
                    "h-values",
                    9,
                    s="text",
                    nested={"a": {"b": [1, {"c": 2}]}},
                    n=float("nan"),
                    i=float("inf"),
                    huge=10**400,
                    _step=5,
                ),
                {"id": "i" * 300, "type": "metrics", "data": {"step": 11}},
                _metrics("h-huge", 10**30),
                _metrics("h-int64", 2**63),
                _metrics("h-negative", -1),
                _metrics("h-float", 1.5),
                _metrics("h-string", "7"),
                _metrics("h-nan", float("nan")),
                _metrics("h-inf", float("inf")),
            ]
            return 200, _page([*hostile, *_good_events("g")], has_more=False)
        return 200, _page(_good_events(job_id), has_more=False)

    def _checkpoints(self, job_id: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        if job_id == "ftjob-cursor":
            # A new id each time, but the last item's id (the next cursor) never changes.
            n = self.hits.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", 0)
            items = [{"id": f"ckpt-{n}", "step_number": n}, {"id": "ckpt-last", "step_number": 0}]
            return 200, _page(items, has_more=True)
        return 200, _page([], has_more=False)

    def _file(self, file_id: str) -> tuple[int, bytes]:
        if file_id == "file-good":
            return 200, b"step,train_loss\n1,1.0\n2,0.5\n3,0.33\n"
        return 200, b"\x89PNG\r\n\x1a\n not a csv \xff\xfe and not base64 !!!"

    # Server
    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                status, body = api.answer(split.path, parse_qs(split.query))
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    return  # the bridge gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return self.base_url

    def stop(self) -> None:
        self.stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _page(items: list[dict[str, Any]], *, has_more: bool) -> bytes:
    return _dumps({"object": "list", "data": items, "has_more": has_more})
