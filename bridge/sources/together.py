"""Together AI's fine-tuning API (``/v1/fine-tunes``) as a :class:`bridge.ports.JobSource`,
read as plain JSON over ``httpx`` (:mod:`bridge.sources.rest`) and turned into the job model of
:mod:`bridge.sources.model`.

What Together gives, and what the bridge makes of it:

- **Jobs.** The list has no paging: one answer holds every job; they are handed on newest first
  by ``created_at`` (Together does not say how it orders them). Statuses map by
  :data:`STATUSES`; ISO-8601 times become Unix seconds; ``finished_at`` is the job's
  ``updated_at`` once it is over (Together has no end time of its own); ``model_output_name`` is
  the fine-tuned model; ``total_price`` (nanodollars) the cost; the job's own W&B settings
  (``wandb_project_name``, ``wandb_entity``, ``wandb_name``, ``wandb_url``) its W&B integration.
- **Metrics** come from ``/metrics``: chronological records keyed by ``train/global_step``,
  training and eval records apart even at one step. The records of one step become one metrics
  event ``together-metrics-<step>`` with Together's metric names (``train/loss``,
  ``eval/loss``, ...). A step is handed on once a record of a later step was logged (so its
  eval record, logged after its training record, is in it) or the job is over. A record logged
  after one of a later step (an eval that came late) is an event of its own,
  ``together-metrics-<step>-eval``. Which records make which event depends only on the order
  Together logged them, never on when they were read: read again from step 0 after a restart,
  every event has the id and values it had, and the store keeps each once. Each read asks
  from the highest step handed on (``global_step_from``), so that an eval logged late for it is
  still seen.
- **Errors.** A failed job's message is that of its last error event (``job_error``); a failed
  job listed without its events is fetched once per process for it.
- **Messages** come from ``/events`` (no paging), their types compared case-insensitively (the
  SDK generations spell them ``job_start`` or ``JOB_START``). Events have no ids: each gets one
  from its content (time, type, message, step), so a read again gives the same ids.
- **Checkpoints** from ``/checkpoints``: ``<job id>:<step>`` for intermediate ones (the ids
  Together's download takes) and ``<job id>`` for the final one.

Jobs whose id cannot be a W&B run id are quarantined as in :mod:`bridge.sources.openai`.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from bridge import limits
from bridge.errors import BridgeError, EndlessPaging, JobNotFound, SourceUnavailable
from bridge.evals import samples
from bridge.evals.samples import Answer
from bridge.paging import DEFAULT_MAX_PAGES, PageWalk
from bridge.sources.model import Job, JobError, bridge_status
from bridge.sources.paging import single_page
from bridge.sources.rest import JsonApi

log = structlog.get_logger(__name__)
Json = dict[str, Any]

PROVIDER: Final = "together"
DEFAULT_BASE_URL = "https://api.together.ai"
MAX_QUARANTINED = 1_000
NANODOLLARS = 1_000_000_000

STATUSES: dict[str, str] = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    # Cancelling takes a while and the job may still end otherwise: it is watched until
    # Together says ``cancelled``.
    "cancel_requested": "running",
    "cancelled": "cancelled",
    "completed": "succeeded",
    "error": "failed",
    "user_error": "failed",
}
"""Together's status words -> the bridge's (an unknown word is watched as ``running``)."""

TERMINAL_EVENTS = frozenset({"job_complete", "job_error", "job_user_error", "job_stopped"})
ERROR_EVENTS = frozenset({"job_error", "job_user_error"})
_LEVELS = {"legacy_info": "info", "legacy_iwarning": "warning", "legacy_ierror": "error"}
_NOT_METRICS = frozenset({"timestamp", "train/global_step"})
# (smallest value, units per second): nanoseconds from 10**17 (1973), then micro, milli.
_TIME_SCALES = ((10**17, 10**9), (10**14, 10**6), (10**11, 10**3))


# Values as Together gives them


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def seconds(value: object) -> int | None:
    """An ISO-8601 time (or a number of seconds) as Unix seconds; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return limits.timestamp(int(value)) if math.isfinite(value) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return limits.timestamp(int(moment.timestamp()))


def record_seconds(value: object) -> int | None:
    """A metrics record's ``timestamp`` (nanoseconds; micro-, milliseconds or seconds are
    told apart by size) as Unix seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    scale = next((s for limit, s in _TIME_SCALES if abs(value) >= limit), 1)
    return limits.timestamp(int(value // scale))


# Jobs


def _hyperparameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in (
        "n_epochs",
        "learning_rate",
        "batch_size",
        "warmup_ratio",
        "max_grad_norm",
        "weight_decay",
        "n_checkpoints",
        "n_evals",
        "eval_steps",
        "max_seq_length",
        "packing",
        "train_on_inputs",
    ):
        if raw.get(key) is not None:
            found[key] = raw[key]
    scheduler = raw.get("lr_scheduler")
    if isinstance(scheduler, Mapping):
        if scheduler.get("lr_scheduler_type") is not None:
            found["lr_scheduler"] = scheduler["lr_scheduler_type"]
        args = scheduler.get("lr_scheduler_args")
        if isinstance(args, Mapping):
            found.update({k: v for k, v in args.items() if v is not None})
    training = raw.get("training_type")
    if isinstance(training, Mapping):
        if training.get("type") is not None:
            found["training_type"] = training["type"]
        found.update({k: v for k, v in training.items() if k != "type" and v is not None})
    return found


def _method(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``training_method`` as the model's ``method``: sft -> supervised, dpo -> dpo, its
    settings as the method's hyperparameters; no method is Together's default, sft."""
    given = raw.get("training_method")
    given = given if isinstance(given, Mapping) else {}
    word = str(given.get("method") or "sft").lower()
    kind = {"sft": "supervised"}.get(word, word)
    settings = {k: v for k, v in given.items() if k != "method" and v is not None}
    return {"type": kind, kind: {"hyperparameters": settings}}


def _integrations(raw: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The job's own W&B run (Together writes it when given a W&B key), in the model's
    ``[{"type": "wandb", "wandb": {...}}]`` shape; None without one."""
    fields = {
        "project": _text(raw.get("wandb_project_name")),
        "entity": _text(raw.get("wandb_entity")),
        "name": _text(raw.get("wandb_name")),
        "url": _text(raw.get("wandb_url")),
    }
    given = {k: v for k, v in fields.items() if v is not None}
    return [{"type": "wandb", "wandb": given}] if given else None


def error_message(events: object) -> str | None:
    """The message of the last error event in a list of Together events."""
    if not isinstance(events, list):
        return None
    found = None
    for event in events:
        if isinstance(event, Mapping):
            kind = str(event.get("type") or "").lower()
            if kind in ERROR_EVENTS or event.get("level") in ("error", "legacy_ierror"):
                found = _text(event.get("message")) or found
    return found


def to_job(raw: Mapping[str, Any], known_error: str | None = None) -> Json:
    """A Together job as the bridge's job model (its ``raw`` without the embedded events)."""
    word = str(raw.get("status") or "").strip()
    status = bridge_status(PROVIDER, word, STATUSES)
    over = status in ("succeeded", "failed", "cancelled")
    error = None
    if status == "failed":
        message = error_message(raw.get("events")) or known_error
        error = JobError(code=word or None, message=message)
    price = raw.get("total_price")
    cost = (
        price / NANODOLLARS
        if isinstance(price, int | float) and not isinstance(price, bool) and price
        else None
    )
    return Job(
        id=str(raw["id"]),
        provider=PROVIDER,
        status=status,
        provider_status=word,
        model=_text(raw.get("model")),
        created_at=seconds(raw.get("created_at")),
        finished_at=seconds(raw.get("updated_at")) if over else None,
        fine_tuned_model=_text(raw.get("model_output_name")) if status == "succeeded" else None,
        trained_tokens=_int(raw.get("token_count")) if status == "succeeded" else None,
        error=error,
        hyperparameters=_hyperparameters(raw),
        method=_method(raw),
        seed=_int(raw.get("random_seed")),
        suffix=_text(raw.get("suffix")),
        integrations=_integrations(raw),
        training_file=_text(raw.get("training_file")),
        validation_file=_text(raw.get("validation_file")),
        cost_usd=cost,
        raw={k: v for k, v in raw.items() if k != "events"},
    ).to_json()


def newest_first(jobs: list[Json]) -> list[Json]:
    return sorted(jobs, key=lambda j: (j.get("created_at") or 0, str(j["id"])), reverse=True)


# Events


def event_id(event: Mapping[str, Any], seen: dict[str, int]) -> str:
    """An id from the event's content; the n-th event of the same content gets ``-n``."""
    parts = [str(event.get(k) or "") for k in ("created_at", "type", "message", "step")]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
    seen[digest] = seen.get(digest, 0) + 1
    count = seen[digest]
    return f"together-event-{digest}" + (f"-{count}" if count > 1 else "")


def message_events(events: list[Any]) -> list[Json]:
    """Together's events (oldest first) as the model's message events."""
    seen: dict[str, int] = {}
    found = []
    for event in events:
        if not isinstance(event, Mapping):
            continue
        kind = str(event.get("type") or "").lower()
        level = str(event.get("level") or "info").lower()
        data = {"type": kind}
        for key in ("step", "total_steps", "checkpoint_path", "model_path", "wandb_url"):
            if event.get(key):
                data[key] = event[key]
        found.append(
            {
                "id": event_id(event, seen),
                "type": "message",
                "level": _LEVELS.get(level, level) if level else "info",
                "created_at": seconds(event.get("created_at")),
                "message": str(event.get("message") or kind),
                "data": data,
            }
        )
    return found


def _total_steps(events: list[Any]) -> int | None:
    for event in reversed(events):
        if isinstance(event, Mapping) and _int(event.get("total_steps")):
            return limits.step(event["total_steps"])
    return None


# Metrics


@dataclass
class _Step:
    values: dict[str, float] = field(default_factory=dict)
    created_at: int | None = None


def _values(record: Mapping[str, Any]) -> dict[str, float]:
    found = {}
    for key, value in record.items():
        number = limits.metric_value(value)
        if key not in _NOT_METRICS and number is not None and isinstance(key, str):
            found[key] = number
    return found


def metric_events(
    job_id: str,
    records: list[Any],
    *,
    done_through: int,
    over: bool,
    total_steps: int | None = None,
) -> tuple[list[Json], int]:
    """The metrics events of these records (chronological, every step from ``done_through``
    on), oldest first, and the highest step they hand on. The latest step is held back
    until the job is ``over``: its eval record may still come."""
    steps: dict[int, _Step] = {}
    late: dict[int, _Step] = {}
    highest = -1
    for record in records:
        step = limits.step(record.get("train/global_step")) if isinstance(record, dict) else None
        if step is None:
            continue
        target = late if step < highest else steps
        entry = target.setdefault(step, _Step())
        entry.values.update(_values(record))
        if entry.created_at is None:
            entry.created_at = record_seconds(record.get("timestamp"))
        highest = max(highest, step)
    ready = [s for s in sorted(steps) if s < highest or over]
    events = [
        _metrics_event(f"together-metrics-{s}", s, steps[s], total_steps)
        for s in ready
        if s >= done_through
    ]
    events += [
        _metrics_event(f"together-metrics-{s}-eval", s, late[s], total_steps) for s in sorted(late)
    ]
    events.sort(key=lambda e: (e["created_at"] or 0, e["data"]["step"]))
    return events, max([done_through, *ready])


def _metrics_event(event_id: str, step: int, entry: _Step, total: int | None) -> Json:
    data: dict[str, Any] = {"step": step}
    if total is not None:
        data["total_steps"] = total
    data.update(entry.values)
    return {"id": event_id, "type": "metrics", "created_at": entry.created_at, "data": data}


# Checkpoints


def to_checkpoint(job_id: str, raw: Mapping[str, Any]) -> Json | None:
    step = limits.step(raw.get("step"))
    if step is None:
        return None
    final = "final" in str(raw.get("checkpoint_type") or "").lower()
    ident = job_id if final else f"{job_id}:{step}"
    return {
        "id": ident,
        "step_number": step,
        "fine_tuned_model_checkpoint": _text(raw.get("object_name"))
        or _text(raw.get("path"))
        or ident,
        "metrics": {},
        "created_at": seconds(raw.get("created_at")),
        "checkpoint_type": raw.get("checkpoint_type"),
        "path": raw.get("path"),
    }


# The source


@dataclass
class _JobMemory:
    """What this process has read of one job: the highest step handed on (-1: none yet), its
    last status, its error message, its total steps."""

    done_through: int = -1
    status: str | None = None
    error: str | None = None
    total_steps: int | None = None
    # Whether the job's events were read once for its error message (a failed job listed
    # without them).
    error_read: bool = False


def _list_of(body: Json, key: str, what: str) -> list[Any]:
    items = body.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise SourceUnavailable(f"{what}: the answer has no list of {key}")
    return items


class TogetherSource:
    """:class:`bridge.ports.JobSource` over Together's REST API."""

    def __init__(self, api: JsonApi, name: str = PROVIDER) -> None:
        self.name = name
        self._api = api
        self.max_pages = DEFAULT_MAX_PAGES
        # Job ids refused (id -> reason); each is logged once.
        self.quarantined: dict[str, str] = {}
        self._memory: dict[str, _JobMemory] = {}
        self._lock = threading.Lock()
        self._stopping: threading.Event | None = None

    @classmethod
    def create(
        cls,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        name: str = PROVIDER,
        key_hint: str = "the Together API key",
    ) -> TogetherSource:
        """``base_url`` is the host, as Together's SDK takes it (a trailing ``/v1`` too)."""
        host = (base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        api = JsonApi(host, api_key, timeout=timeout, max_retries=max_retries, key_hint=key_hint)
        return cls(api, name)

    @property
    def stopping(self) -> threading.Event | None:
        """The bridge's stop event (set by the wiring): walks and retry pauses end with it."""
        return self._stopping

    @stopping.setter
    def stopping(self, event: threading.Event | None) -> None:
        self._stopping = event
        self._api.stopping = event

    def _remember(self, job_id: str) -> _JobMemory:
        with self._lock:
            return self._memory.setdefault(job_id, _JobMemory())

    def _model(self, raw: Json) -> Json:
        memory = self._remember(str(raw["id"]))
        found = error_message(raw.get("events"))
        if found:
            memory.error = found
        job = to_job(raw, memory.error)
        memory.status = job["status"]
        return limits.clean_item(job)

    def _accepts(self, raw: Json) -> bool:
        job_id = raw.get("id")
        problem = limits.run_id_problem(job_id)
        if problem is None:
            return True
        if not isinstance(job_id, str) or not job_id:
            log.warning("api.items_skipped", what="list jobs", skipped=1)
            return False
        if job_id not in self.quarantined and len(self.quarantined) < MAX_QUARANTINED:
            self.quarantined[job_id] = problem
            log.warning("job.quarantined", source=self.name, job_id=job_id[:80], reason=problem)
        return False

    def job_pages(self) -> Iterator[list[Json]]:
        walk = PageWalk("list jobs", self.max_pages, self.stopping)

        def fetch() -> list[Json]:
            body = self._api.get("/v1/fine-tunes", "list jobs", missing=SourceUnavailable)
            items = _list_of(body, "data", "list jobs")
            raw = [limits.clean_json(i) for i in items if isinstance(i, dict) and self._accepts(i)]
            return newest_first([self._model(self._with_error(job)) for job in raw])

        try:
            yield from single_page(walk, fetch)
        except EndlessPaging as error:
            log.warning("api.listing_cut", source=self.name, error=str(error))

    def _with_error(self, raw: Json) -> Json:
        """A failed job listed without its events is fetched once (per process), for the
        message of its error event: the listing alone would give the run no reason."""
        if STATUSES.get(str(raw.get("status") or "").strip().lower()) != "failed":
            return raw
        memory = self._remember(str(raw["id"]))
        if isinstance(raw.get("events"), list) or memory.error or memory.error_read:
            return raw
        try:
            full = self._api.get(f"/v1/fine-tunes/{raw['id']}", f"job {raw['id']}")
        except BridgeError as error:
            log.debug("job.error_unread", job_id=raw["id"], error=str(error))
            return raw
        memory.error_read = True
        memory.error = error_message(limits.clean_json(full.get("events"))) or memory.error
        return raw

    def get_job(self, job_id: str) -> Json:
        problem = limits.run_id_problem(job_id)
        if problem is not None:
            raise JobNotFound(f"job {job_id[:80]!r}: {problem}")
        what = f"job {job_id}"
        raw = limits.clean_json(self._api.get(f"/v1/fine-tunes/{job_id}", what))
        if raw.get("id") != job_id:
            raise SourceUnavailable(f"{what}: the answer is not this job")
        return self._model(raw)

    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        """One page, newest first: the job's messages and its metrics not yet handed on
        (the API has no page size: ``first_page`` is not needed)."""
        walk = PageWalk(f"events of {job_id}", self.max_pages, self.stopping)
        return single_page(walk, lambda: self._events(job_id))

    def _events(self, job_id: str) -> list[Json]:
        memory = self._remember(job_id)
        what = f"events of {job_id}"
        raw_events = _list_of(self._api.get(f"/v1/fine-tunes/{job_id}/events", what), "data", what)
        raw_events = [limits.clean_json(e) for e in raw_events]
        messages = message_events(raw_events)
        memory.total_steps = _total_steps(raw_events) or memory.total_steps
        memory.error = error_message(raw_events) or memory.error
        ended = any(
            str(e.get("type") or "").lower() in TERMINAL_EVENTS
            for e in raw_events
            if isinstance(e, dict)
        )
        over = ended or memory.status in ("succeeded", "failed", "cancelled")
        metrics = self._metrics(job_id, memory, over=over)
        found = messages + metrics
        found.sort(key=lambda e: (e["created_at"] or 0, e["type"] == "message"))
        return [limits.clean_item(e) for e in reversed(found)]

    def _metrics(self, job_id: str, memory: _JobMemory, *, over: bool) -> list[Json]:
        what = f"metrics of {job_id}"
        params = {"global_step_from": memory.done_through} if memory.done_through >= 0 else None
        body = self._api.get(f"/v1/fine-tunes/{job_id}/metrics", what, params)
        records = _list_of(body, "metrics", what)
        events, done = metric_events(
            job_id,
            records,
            done_through=memory.done_through,
            over=over,
            total_steps=memory.total_steps,
        )
        memory.done_through = done
        return events

    def checkpoints(self, job_id: str) -> list[Json]:
        what = f"checkpoints of {job_id}"
        items = _list_of(self._api.get(f"/v1/fine-tunes/{job_id}/checkpoints", what), "data", what)
        found = [c for i in items if isinstance(i, dict) and (c := to_checkpoint(job_id, i))]
        found = [limits.clean_item(c) for c in found if limits.id_problem(c["id"]) is None]
        return sorted(found, key=lambda c: (c["step_number"], c["id"] == job_id), reverse=True)

    def file_content(self, file_id: str) -> bytes:
        return self._api.content(f"/v1/files/{file_id}/content", f"file {file_id}")

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer:
        """One chat completion (``POST /v1/chat/completions``, OpenAI's shape) with the
        source's key, for the samples of :mod:`bridge.evals`; no retries."""
        started = time.monotonic()
        body = samples.chat_request(model, messages, max_tokens)
        done = self._api.post("/v1/chat/completions", f"chat with {model}", body=body, retries=0)
        return samples.answer_of(done, time.monotonic() - started)
