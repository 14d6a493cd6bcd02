"""An OpenAI-compatible server without events or checkpoints endpoints: a 404 there is not
"the job is gone" (the source asks for the job to tell which), and it is said once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.errors import JobNotFound
from bridge.sources.openai import OpenAISource

JOB = {"id": "ftjob-here", "object": "fine_tuning.job", "status": "running", "model": "m"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found: Any = None
        if self.path.startswith("/v1/fine_tuning/jobs/ftjob-here?") or self.path.endswith(
            "/v1/fine_tuning/jobs/ftjob-here"
        ):
            found = JOB
        body = json.dumps(found or {"error": {"message": "Not found", "code": None}}).encode()
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_missing_endpoints_are_detected_and_said_once(base_url: str) -> None:
    source = OpenAISource.create(api_key="k", base_url=base_url, timeout=5, max_retries=0)
    with capture_logs() as logs:
        assert [e for page in source.event_pages("ftjob-here") for e in page] == []
        assert source.checkpoints("ftjob-here") == []
        assert list(source.event_pages("ftjob-here")) == [[]]  # not asked again
    assert source.missing == {"events", "checkpoints"}
    said = [e for e in logs if e["event"] == "api.endpoint_missing"]
    assert [e["endpoint"] for e in said] == ["events", "checkpoints"]


def test_a_404_for_a_job_that_is_gone_still_says_gone(base_url: str) -> None:
    source = OpenAISource.create(api_key="k", base_url=base_url, timeout=5, max_retries=0)
    with pytest.raises(JobNotFound):
        list(source.event_pages("ftjob-gone"))
    assert source.missing == set()
