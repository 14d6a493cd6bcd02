"""The log lines themselves: one write each, so that processes sharing stderr (the writer
processes of a backfill) never splice a line of one into a line of another."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from bridge.logs import configure_logging


class Writes(io.StringIO):
    """A stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


@pytest.fixture
def restored() -> Iterator[None]:
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored")
def test_every_log_line_is_one_whole_write() -> None:
    stream = Writes()
    configure_logging(fmt="json", stream=stream, secrets=["sk-hidden"])
    structlog.get_logger("t").info("run.opened", job_id="ftjob-1", key="sk-hidden")
    logging.getLogger("some.library").warning("from the standard library")
    assert len(stream.calls) == 2, stream.calls
    for call in stream.calls:
        assert call.endswith("\n") and call.count("\n") == 1, call
        json.loads(call)
    assert "sk-hidden" not in stream.getvalue()
