"""The fine-tuning API through the official ``openai`` SDK (OpenAI, Azure's v1 API, and any
OpenAI-compatible endpoint).

Responses are read as plain JSON so that fields the SDK does not know, and values of the
wrong type, reach the mapping code; the SDK still does the HTTP, the retries and the timeouts.

What a hostile API can send is bounded here, before anything is stored: every walk over pages
is a :class:`bridge.paging.PageWalk` (repeated cursors and pages that never end stop it, and so
does the stop event), items whose id cannot be stored are skipped, strings and numbers are
brought within :mod:`bridge.limits`, and jobs whose id is not a W&B run id are quarantined:
left out, logged once with the reason, counted in ``quarantined``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openai
import structlog

from bridge import limits
from bridge.errors import (
    BridgeError,
    EndlessPaging,
    JobNotFound,
    SourceRejected,
    SourceUnavailable,
)
from bridge.evals.samples import Answer
from bridge.paging import DEFAULT_MAX_PAGES, PageWalk
from bridge.ports import Json
from bridge.sources.clients import openai_pool
from bridge.sources.openai_model import job_model

log = structlog.get_logger(__name__)
T = TypeVar("T")
PAGE_SIZE = 100
#: Quarantined job ids remembered (and reported) per source.
MAX_QUARANTINED = 1_000


class JobQuarantined(JobNotFound):
    """The job's id cannot be a W&B run id: the job is left out, never tried again."""


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate(error: openai.OpenAIError, what: str) -> BridgeError:
    """SDK errors as the bridge's: retryable (connection, timeout, 429, 5xx) or not."""
    if isinstance(error, openai.APIConnectionError):
        kind = "timed out" if isinstance(error, openai.APITimeoutError) else "could not connect"
        return SourceUnavailable(f"{what}: {kind}")
    if isinstance(error, openai.NotFoundError):
        return JobNotFound(f"{what}: not found")
    if isinstance(error, openai.RateLimitError | openai.InternalServerError):
        return SourceUnavailable(
            f"{what}: HTTP {error.status_code}", retry_after=_retry_after(error)
        )
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return SourceRejected(
            f"{what}: HTTP {error.status_code}, the API key was refused (check OPENAI_API_KEY)"
        )
    if isinstance(error, openai.APIStatusError):
        if error.status_code in (408, 409) or error.status_code >= 500:
            return SourceUnavailable(f"{what}: HTTP {error.status_code}")
        return SourceRejected(f"{what}: HTTP {error.status_code}")
    return SourceUnavailable(f"{what}: {type(error).__name__}")


def _json_object(text: str, what: str) -> Json:
    try:
        body = json.loads(text)
    except ValueError:
        raise SourceUnavailable(f"{what}: the answer is not JSON") from None
    except RecursionError:
        raise SourceUnavailable(f"{what}: the answer is JSON nested too deep") from None
    if not isinstance(body, dict):
        raise SourceUnavailable(f"{what}: the answer is not a JSON object")
    return body


def _page(
    body: Json, what: str, id_problem: Callable[[object], str | None] = limits.id_problem
) -> tuple[list[Json], bool]:
    data = body.get("data")
    if not isinstance(data, list):
        raise SourceUnavailable(f"{what}: the answer has no list of data")
    items = [
        limits.clean_item(item)
        for item in data
        if isinstance(item, dict) and id_problem(item.get("id")) is None
    ]
    if len(items) != len(data):
        log.warning("api.items_skipped", what=what, skipped=len(data) - len(items))
    return items, body.get("has_more") is True


def _any_string_id(value: object) -> str | None:
    return None if isinstance(value, str) and value else "no string id"


class OpenAISource:
    """:class:`bridge.ports.JobSource` over an ``openai.OpenAI`` client."""

    def __init__(
        self,
        client: openai.OpenAI,
        name: str = "openai",
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self._clients = openai_pool(client)
        self._metadata = metadata
        # Set by the wiring to the bridge's stop event: every walk over pages honours it.
        self.stopping: threading.Event | None = None
        self.max_pages = DEFAULT_MAX_PAGES
        # Job ids refused (id -> reason); each is logged once.
        self.quarantined: dict[str, str] = {}
        self._endless_listing_said = False
        # Endpoints an OpenAI-compatible server lacks ("events", "checkpoints"), and the
        # jobs they answered 404 for although the job is there.
        self.missing: set[str] = set()
        self._without: dict[str, set[str]] = {"events": set(), "checkpoints": set()}

    @classmethod
    def create(
        cls,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        organization: str | None = None,
        project: str | None = None,
        name: str = "openai",
        metadata: dict[str, str] | None = None,
    ) -> OpenAISource:
        client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            timeout=timeout,
            max_retries=max_retries,
        )
        return cls(client, name, metadata=metadata)

    def _call(self, what: str, request: Callable[[openai.OpenAI], Any]) -> Json:
        try:
            with self._clients.lend() as client:
                raw = request(client)
            return _json_object(raw.text, what)
        except openai.OpenAIError as error:
            raise translate(error, what) from None

    def _paged(
        self,
        what: str,
        fetch: Callable[[str | None, openai.OpenAI], Any],
        id_problem: Callable[[object], str | None] = limits.id_problem,
    ) -> Iterator[list[Json]]:
        walk = PageWalk(what, self.max_pages, self.stopping)
        after: str | None = None
        while True:
            walk.before_page(after)
            body = self._call(what, functools.partial(fetch, after))
            items, has_more = _page(body, what, id_problem)
            yield walk.new_items(items, has_more)
            if not has_more or not items:
                return
            after = items[-1]["id"]

    def _accepted_jobs(self, pages: Iterator[list[Json]]) -> Iterator[list[Json]]:
        """Jobs whose id can be a W&B run id; an endless listing ends (once said): jobs off
        the pages are fetched one by one, so a cut listing loses nothing already known."""
        try:
            for page in pages:
                yield [job_model(job) for job in page if self._accepts(job)]
        except EndlessPaging as error:
            emit = log.debug if self._endless_listing_said else log.warning
            self._endless_listing_said = True
            emit("api.listing_cut", source=self.name, error=str(error))

    def _accepts(self, job: Json) -> bool:
        job_id = job["id"]
        problem = limits.run_id_problem(job_id)
        if problem is None:
            return True
        if job_id not in self.quarantined and len(self.quarantined) < MAX_QUARANTINED:
            self.quarantined[job_id] = problem
            log.warning("job.quarantined", source=self.name, job_id=job_id[:80], reason=problem)
        return False

    def job_pages(self) -> Iterator[list[Json]]:
        def fetch(after: str | None, client: openai.OpenAI) -> Any:
            return client.fine_tuning.jobs.with_raw_response.list(
                limit=PAGE_SIZE,
                after=after if after is not None else openai.omit,
                metadata=self._metadata if self._metadata else openai.omit,
            )

        # Every job with a string id is kept here, so that a bad one is quarantined with
        # its reason (``_accepts``) rather than skipped unsaid.
        return self._accepted_jobs(self._paged("list jobs", fetch, _any_string_id))

    def get_job(self, job_id: str) -> Json:
        problem = limits.run_id_problem(job_id)
        if problem is not None:
            raise JobQuarantined(f"job {job_id[:80]!r}: {problem}")
        what = f"job {job_id}"
        job = self._call(what, lambda c: c.fine_tuning.jobs.with_raw_response.retrieve(job_id))
        if job.get("id") != job_id:
            raise SourceUnavailable(f"{what}: the answer is not this job")
        return job_model(limits.clean_item(job))

    def checkpoints(self, job_id: str) -> list[Json]:
        def fetch(after: str | None, client: openai.OpenAI) -> Any:
            return client.fine_tuning.jobs.checkpoints.with_raw_response.list(
                job_id, limit=PAGE_SIZE, after=after if after is not None else openai.omit
            )

        if job_id in self._without["checkpoints"]:
            return []
        try:
            return [c for page in self._paged(f"checkpoints of {job_id}", fetch) for c in page]
        except JobNotFound:
            self._endpoint_missing(job_id, "checkpoints")
            return []

    def file_content(self, file_id: str) -> bytes:
        try:
            with self._clients.lend() as client:
                return bytes(client.files.with_raw_response.content(file_id).content)
        except openai.OpenAIError as error:
            raise translate(error, f"file {file_id}") from None

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer:
        """One chat completion with the source's client and key (the samples of
        :mod:`bridge.evals`); no retries: a failure ends the sampling."""
        started = time.monotonic()
        try:
            with self._clients.lend() as client:
                done = client.with_options(max_retries=0).chat.completions.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                )
        except openai.OpenAIError as error:
            raise translate(error, f"chat with {model}") from None
        text = done.choices[0].message.content if done.choices else None
        usage = done.usage
        return Answer(
            text=text or "",
            latency=time.monotonic() - started,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        # A job read before needs only its newest events: a short first page is less to
        # send, decode and check; a full page follows when all of them were new.
        first = PAGE_SIZE if first_page is None else max(1, min(PAGE_SIZE, first_page))

        def fetch(after: str | None, client: openai.OpenAI) -> Any:
            jobs = client.fine_tuning.jobs.with_raw_response
            if after is None:
                return jobs.list_events(job_id, limit=first)
            return jobs.list_events(job_id, limit=PAGE_SIZE, after=after)

        if job_id in self._without["events"]:
            return iter([[]])
        return self._events_or_none(job_id, self._paged(f"events of {job_id}", fetch))

    def _events_or_none(self, job_id: str, pages: Iterator[list[Json]]) -> Iterator[list[Json]]:
        try:
            yield from pages
        except JobNotFound:
            self._endpoint_missing(job_id, "events")
            yield []

    def _endpoint_missing(self, job_id: str, endpoint: str) -> None:
        """A 404 on a job's events or checkpoints: the job is gone, or (an OpenAI-compatible
        server) the endpoint does not exist, for this job or any. Asking for the job tells
        which; the endpoint is then not asked again for this job (which has no metrics from
        it), and said once per source."""
        self.get_job(job_id)  # raises JobNotFound when the job itself is gone
        self._without[endpoint].add(job_id)
        if endpoint in self.missing:
            return
        self.missing.add(endpoint)
        log.warning(
            "api.endpoint_missing",
            source=self.name,
            endpoint=endpoint,
            detail=f"the API answers 404 for the {endpoint} of a job it has: read without them",
        )
