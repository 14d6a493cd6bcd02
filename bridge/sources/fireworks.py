"""Fireworks AI's fine-tuning jobs (``/v1/accounts/{account}/...``) as the bridge's job model,
over plain HTTP (``httpx``).

One source reads one account's three collections: ``supervisedFineTuningJobs`` (SFT),
``dpoJobs`` (DPO) and ``reinforcementFineTuningJobs`` (RFT). They are listed newest first
(``orderBy=createTime desc``, ``pageToken`` paging) and merged into one newest-first stream,
so that the engine's rule "stop after the page where known jobs begin" holds across them.

**Run ids.** A Fireworks job's id is its resource name, ``accounts/{account}/{collection}/
{job}``, which W&B cannot take (``/``). Its run id is ``fw-{family}.{account}.{job}``, with
family ``sft``, ``dpo`` or ``rft``: ``accounts/acme/dpoJobs/x1y2`` -> ``fw-dpo.acme.x1y2``.
Stable (a function of the name), unique across the families and across accounts (both are
in it), and reversible: ``.`` appears in neither an account id nor a job id (the source
quarantines a job whose id would hold one, or any character a run id cannot, or whose run
id would be longer than ``bridge.limits.MAX_ID_LENGTH``), so :func:`resource_of` splits it
back into the resource. ``get_job`` also takes the resource name itself.

**Statuses** (:data:`STATUS_TABLE`): ``COMPLETED`` and ``EARLY_STOPPED`` -> succeeded (an early
stop says so in ``raw["early_stopped"]``); ``FAILED`` and ``EXPIRED`` -> failed;
``CANCELLED`` -> cancelled; ``PAUSED`` -> paused; ``CREATING``, ``VALIDATING`` and
``CREATING_INPUT_DATASET`` -> validating_files (the job's inputs are still being checked);
``PENDING``, ``RE_QUEUEING``, ``IDLE`` and ``UNSPECIFIED`` (also a job with no state: proto3
JSON leaves the default out) -> queued (waiting for capacity, not training); ``RUNNING``,
``WRITING_RESULTS`` and ``CANCELLING`` -> running (the job can still write metrics). A job
being deleted (``DELETING``, ``DELETING_CLEANING_UP``) is treated as gone: left out of the
listing, and ``get_job`` raises :class:`bridge.errors.JobNotFound`. Any other word is kept
as ``provider_status`` and watched as running (:func:`bridge.sources.model.bridge_status`).

**Metrics.** There is no events endpoint. SFT jobs carry ``metricsFileSignedUrl``; DPO jobs
give it from ``:getMetricsFileEndpoint``; the file is JSON lines with ``step``,
``timestamp`` and the metrics at the top level or under ``data``. The whole file is read
again at each cycle (it grows while the job trains) and every line becomes a metrics event
with a deterministic id, ``fireworks-step-<N>`` (a later, different line of the same step is
``fireworks-step-<N>-<k>``, a repeated line is dropped), so the engine stores each step
once. The URL is taken from the last job snapshot this source read (the listing of the
cycle, or the last ``get``); an expired one (403) is replaced once per read by getting the
job (the DPO endpoint) again. RFT jobs carry their curves in ``outputMetrics`` (a JSON
string, ``{"curves": {name: {"step": [...], metric: [...]}}}``), one event per step.
``checkpoints`` is empty: managed jobs have no checkpoint listing.

**Requests per cycle**: one list request per collection (three; more only when over 50 jobs
appeared since the last cycle), none per SFT or RFT job (their URL and curves come with the
listing), one per DPO job whose metrics URL is not known yet, one per expired URL, and the
file downloads (on the storage host, not the API). Fireworks' rate limit is account-wide
(10 requests per minute without a payment method): at a 60 s poll interval that is three
of the ten.

Requests have timeouts and bounded retries (connection errors, timeouts, 408, 409, 429 and
5xx, honouring ``retry-after`` up to :data:`MAX_RETRY_WAIT`); what still fails is one of
``bridge.errors``: retryable (``SourceUnavailable``, with ``retry_after`` on a 429), an API
key or account refused (``SourceRejected``), a job not found (``JobNotFound``). The API key
is sent to the API only, never to a signed URL.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import httpx
import structlog

from bridge import limits
from bridge.errors import (
    BridgeError,
    EndlessPaging,
    JobNotFound,
    SourceRejected,
    SourceUnavailable,
)
from bridge.evals import samples
from bridge.evals.samples import Answer
from bridge.paging import DEFAULT_MAX_PAGES, PageWalk
from bridge.sources import paging
from bridge.sources.model import Job, JobError, bridge_status

log = structlog.get_logger(__name__)
Json = dict[str, Any]

DEFAULT_BASE_URL: Final = "https://api.fireworks.ai"
PAGE_SIZE: Final = 50
EVENTS_PAGE: Final = 100
#: Bytes of a metrics file read; the lines beyond are left out (said once).
MAX_METRICS_BYTES: Final = 32 * 1024 * 1024
#: Bytes of an API answer read (a page of 50 RFT jobs with their curves is far less).
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
#: Longest ``retry-after`` waited for inside a request; beyond it the cycle gives up.
MAX_RETRY_WAIT: Final = 20.0
_DATASET = re.compile(r"accounts/[A-Za-z0-9_-]{1,63}/datasets/[A-Za-z0-9_.-]{1,128}")
MAX_QUARANTINED: Final = 1_000
#: Job snapshots remembered (for their metrics URL and curves).
MAX_REMEMBERED: Final = 10_000

FAMILIES: Final = {
    "supervisedFineTuningJobs": ("sft", "supervised"),
    "dpoJobs": ("dpo", "dpo"),
    "reinforcementFineTuningJobs": ("rft", "reinforcement"),
}
COLLECTION_OF: Final = {family: collection for collection, (family, _) in FAMILIES.items()}

STATUS_TABLE: Final = {
    f"job_state_{word}": status
    for words, status in [
        (("completed", "early_stopped"), "succeeded"),
        (("failed", "expired"), "failed"),
        (("cancelled",), "cancelled"),
        (("paused",), "paused"),
        (("creating", "validating", "creating_input_dataset"), "validating_files"),
        (("pending", "re_queueing", "idle", "unspecified"), "queued"),
        (("running", "writing_results", "cancelling"), "running"),
    ]
    for word in words
}
GONE_STATES: Final = frozenset({"JOB_STATE_DELETING", "JOB_STATE_DELETING_CLEANING_UP"})
HYPERPARAMETERS: Final = (
    "epochs",
    "learningRate",
    "loraRank",
    "batchSize",
    "batchSizeSamples",
    "maxContextLength",
    "learningRateWarmupSteps",
    "gradientAccumulationSteps",
    "optimizerWeightDecay",
    "earlyStop",
    "nodes",
    "isTurbo",
)
# Left out of ``raw``: secrets (a signed URL is one until it expires; the job's own W&B key),
# and the RFT curves, which become events.
_NOT_RAW: Final = ("metricsFileSignedUrl", "trainerLogsSignedUrl", "outputMetrics")
_KEPT_HEADERS: Final = frozenset({"retry-after", "content-type"})
_ID_PART = re.compile(r"[A-Za-z0-9_-]+")
_FRACTION = re.compile(r"(\.\d{6})\d+")


# Run ids
def run_id_of(name: object) -> str:
    """The run id of a resource name (see the module docstring); ValueError with the reason
    when it has none."""
    if not isinstance(name, str):
        raise ValueError("no resource name")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] not in FAMILIES:
        raise ValueError(f"{limits.truncate(name, 80)!r} is not a fine-tuning job's name")
    account, collection, job = parts[1], parts[2], parts[3]
    for part in (account, job):
        if not _ID_PART.fullmatch(part):
            raise ValueError(f"{limits.truncate(part, 80)!r} cannot be part of a W&B run id")
    run_id = f"fw-{FAMILIES[collection][0]}.{account}.{job}"
    problem = limits.run_id_problem(run_id)
    if problem is not None:
        raise ValueError(problem)
    return run_id


def resource_of(run_id: str) -> tuple[str, str, str]:
    """``(account, collection, job)`` of a run id (or of a resource name); ValueError when it
    is neither."""
    if run_id.startswith("accounts/"):
        run_id = run_id_of(run_id)
    parts = run_id.split(".")
    family = parts[0].removeprefix("fw-") if parts[0].startswith("fw-") else ""
    if len(parts) != 3 or family not in COLLECTION_OF or not all(parts[1:]):
        raise ValueError(f"{limits.truncate(run_id, 80)!r} is not a Fireworks run id")
    return parts[1], COLLECTION_OF[family], parts[2]


# The job model
def unix_seconds(value: object) -> int | None:
    """An RFC 3339 time (``2026-05-01T12:00:00.123456789Z``) as Unix seconds, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return limits.timestamp(int(moment.timestamp()))


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _cost(resource: Mapping[str, Any]) -> float | None:
    cost = _dict(resource.get("estimatedCost"))
    if cost.get("currencyCode") != "USD":
        return None
    try:
        return float(cost.get("units") or 0) + float(cost.get("nanos") or 0) / 1e9
    except (TypeError, ValueError):
        return None


def _integrations(resource: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """``wandbConfig``, when enabled, as the bridge's native-W&B shape (never its key)."""
    wandb = _dict(resource.get("wandbConfig"))
    if wandb.get("enabled") is not True:
        return None
    settings = {
        "project": _text(wandb.get("project")),
        "entity": _text(wandb.get("entity")),
        "name": _text(wandb.get("runId")),
        "run_id": _text(wandb.get("runId")),
        "url": _text(wandb.get("url")),
    }
    return [{"type": "wandb", "wandb": settings}]


def _method(kind: str, resource: Mapping[str, Any]) -> dict[str, Any]:
    loss = _dict(resource.get("lossConfig"))
    own: dict[str, Any] = {}
    if "klBeta" in loss:
        own["klBeta"] = loss["klBeta"]
    if isinstance(loss.get("method"), str):
        own["lossMethod"] = loss["method"]
    body: dict[str, Any] = {"hyperparameters": own}
    if kind == "reinforcement":
        body["evaluator"] = resource.get("evaluator")
        body["inference_parameters"] = _dict(resource.get("inferenceParameters"))
    return {"type": kind, kind: body}


def _error(status: str, state: str, resource: Mapping[str, Any]) -> JobError | None:
    if status != "failed":
        return None
    rpc = _dict(resource.get("status"))
    message = _text(rpc.get("message"))
    if message is None and state == "JOB_STATE_EXPIRED":
        message = "The job expired."
    return JobError(code=_text(rpc.get("code")) or state, message=message)


def _fine_tuned_model(training: Mapping[str, Any], account: str, job: str) -> str:
    """``outputModel`` ("if not specified, the job ID will be used") as a model resource."""
    model = _text(training.get("outputModel")) or job
    return model if model.startswith("accounts/") else f"accounts/{account}/models/{model}"


def _raw(resource: Mapping[str, Any], early: bool) -> Json:
    raw = {k: v for k, v in resource.items() if k not in _NOT_RAW}
    if isinstance(raw.get("wandbConfig"), dict):
        raw["wandbConfig"] = {k: v for k, v in raw["wandbConfig"].items() if k != "apiKey"}
    if early:
        raw["early_stopped"] = True
    return limits.clean_item(raw)


def job_model(resource: Mapping[str, Any]) -> Json:
    """A job resource as the bridge's job model; ValueError when its name gives no run id."""
    run_id = run_id_of(resource.get("name"))
    account, collection, job = resource_of(run_id)
    kind = FAMILIES[collection][1]
    state = _text(resource.get("state")) or "JOB_STATE_UNSPECIFIED"
    status = bridge_status("fireworks", state, STATUS_TABLE)
    training = resource if kind == "supervised" else _dict(resource.get("trainingConfig"))
    return Job(
        id=run_id,
        provider="fireworks",
        status=status,
        provider_status=state,
        model=_text(training.get("baseModel")) or _text(training.get("warmStartFrom")),
        created_at=unix_seconds(resource.get("createTime")),
        finished_at=unix_seconds(resource.get("completedTime")),
        fine_tuned_model=_fine_tuned_model(training, account, job)
        if status == "succeeded"
        else None,
        error=_error(status, state, resource),
        hyperparameters={k: training[k] for k in HYPERPARAMETERS if k in training},
        method=_method(kind, resource),
        integrations=_integrations(resource),
        training_file=_text(resource.get("dataset")),
        validation_file=_text(resource.get("evaluationDataset")),
        cost_usd=_cost(resource),
        raw=_raw(resource, state == "JOB_STATE_EARLY_STOPPED"),
    ).to_json()


# Metrics
def metric_events(content: bytes) -> list[Json]:
    """The metrics file's lines as metrics events, oldest first (see the module docstring)."""
    events: list[Json] = []
    seen: set[bytes] = set()
    per_step: dict[int, int] = {}
    for line in content.split(b"\n"):
        text = line.strip()
        if not text or text in seen:
            continue
        seen.add(text)
        event = _line_event(text, per_step)
        if event is not None:
            events.append(event)
    return events


def _line_event(text: bytes, per_step: dict[int, int]) -> Json | None:
    try:
        line = json.loads(text)
    except (ValueError, RecursionError):
        return None  # a line still being written, or not JSON
    if not isinstance(line, dict):
        return None
    step = limits.step(line.get("step"))
    if step is None:
        return None
    nested = line.get("data")
    values = nested if isinstance(nested, dict) else line
    data = {k: v for k, v in values.items() if k not in ("step", "timestamp", "data")}
    count = per_step[step] = per_step.get(step, 0) + 1
    event_id = f"fireworks-step-{step}" + (f"-{count}" if count > 1 else "")
    when = line.get("timestamp")
    created = unix_seconds(when) if isinstance(when, str) else limits.timestamp(when)
    return {
        "id": event_id,
        "type": "metrics",
        "created_at": created,
        "data": {"step": step, **limits.clean_json(data)},
    }


def curve_events(output_metrics: object) -> list[Json]:
    """RFT's ``outputMetrics`` (a JSON string) as one metrics event per step, oldest first:
    ``{curve}/{metric}`` for each curve, given as columns (``{"step": [...], metric: [...]}``)
    or as points (``[{"step": N, metric: value}, ...]``)."""
    if not isinstance(output_metrics, str) or not output_metrics:
        return []
    try:
        parsed = json.loads(output_metrics)
    except (ValueError, RecursionError):
        return []
    curves = _dict(_dict(parsed).get("curves"))
    steps: dict[int, dict[str, float]] = {}
    for name, curve in curves.items():
        for point in _points(curve):
            step = limits.step(point.get("step"))
            if step is None:
                continue
            for key, value in point.items():
                number = limits.metric_value(value)
                if key != "step" and number is not None and not isinstance(value, bool):
                    steps.setdefault(step, {})[f"{name}/{key}"] = number
    return [
        {
            "id": f"fireworks-step-{step}",
            "type": "metrics",
            "created_at": None,
            "data": {"step": step, **values},
        }
        for step, values in sorted(steps.items())
    ]


def _points(curve: object) -> list[dict[str, Any]]:
    if isinstance(curve, list):
        return [point for point in curve if isinstance(point, dict)]
    if isinstance(curve, dict) and isinstance(curve.get("step"), list):
        columns = {k: v for k, v in curve.items() if isinstance(v, list)}
        length = len(columns["step"])
        return [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(length)]
    return []


def newest_first(events: list[Json]) -> Iterator[list[Json]]:
    ordered = list(reversed(events))
    for start in range(0, len(ordered), EVENTS_PAGE):
        yield ordered[start : start + EVENTS_PAGE]


# HTTP
def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def translate(response: httpx.Response, what: str, *, job: bool = False) -> BridgeError:
    """An API answer that is not 2xx as the bridge's error."""
    code = response.status_code
    if code == 429:
        return SourceUnavailable(f"{what}: HTTP 429", retry_after=_retry_after(response))
    if code in (401, 403):
        return SourceRejected(
            f"{what}: HTTP {code}, the API key was refused or cannot read this account "
            "(check the source's api_key and account_id)"
        )
    if code == 404:
        if job:
            return JobNotFound(f"{what}: not found")
        return SourceRejected(f"{what}: HTTP 404 (check the source's account_id and base_url)")
    if code in (408, 409) or code >= 500:
        return SourceUnavailable(f"{what}: HTTP {code}", retry_after=_retry_after(response))
    return SourceRejected(f"{what}: HTTP {code}")


def _read(client: httpx.Client, request: httpx.Request, limit: int) -> tuple[httpx.Response, bool]:
    """Send ``request``; the answer with at most ``limit`` bytes of its body, and whether
    there was more."""
    response = client.send(request, stream=True)
    try:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                break
    finally:
        response.close()
    cut = len(body) > limit
    # The body is decoded already: only the headers read later are kept.
    kept = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    answer = httpx.Response(response.status_code, headers=kept, content=bytes(body[:limit]))
    return answer, cut


def _retryable(response: httpx.Response) -> bool:
    return response.status_code in (408, 409, 429) or response.status_code >= 500


def _json_object(response: httpx.Response, what: str) -> Json:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        raise SourceUnavailable(f"{what}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise SourceUnavailable(f"{what}: the answer is not a JSON object")
    return body


class _Expired(Exception):
    """The signed URL was refused (expired, most likely)."""


class FireworksSource:
    """:class:`bridge.ports.JobSource` over one Fireworks account."""

    def __init__(
        self,
        *,
        api_key: str,
        account_id: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 20.0,
        max_retries: int = 2,
        name: str = "fireworks",
    ) -> None:
        self.name = name
        self.account_id = account_id
        self.max_retries = max_retries
        root = base_url.rstrip("/").removesuffix("/v1")
        self._api = httpx.Client(
            base_url=root,
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "ftbridge"},
        )
        # Signed URLs carry their own credentials: this client never sends the API key.
        self._files = httpx.Client(
            timeout=timeout, follow_redirects=True, headers={"User-Agent": "ftbridge"}
        )
        # Set by the wiring to the bridge's stop event: walks and retry waits honour it.
        self.stopping: threading.Event | None = None
        self.max_pages = DEFAULT_MAX_PAGES
        self.quarantined: dict[str, str] = {}
        self._lock = threading.Lock()
        self._snapshots: dict[str, Json] = {}
        self._dpo_urls: dict[str, str] = {}
        self._said: set[str] = set()

    def close(self) -> None:
        self._api.close()
        self._files.close()

    # Requests
    def _send(
        self, client: httpx.Client, url: str, what: str, limit: int, **kwargs: Any
    ) -> tuple[httpx.Response, bool]:
        """The answer of a GET, its body read up to ``limit`` bytes (and whether it was cut),
        retried when transient; transport errors as the bridge's."""
        for attempt in itertools.count():
            try:
                response, cut = _read(client, client.build_request("GET", url, **kwargs), limit)
            except httpx.TimeoutException:
                failure: BridgeError = SourceUnavailable(f"{what}: timed out")
            except httpx.HTTPError as error:
                failure = SourceUnavailable(f"{what}: could not connect ({type(error).__name__})")
            else:
                if not _retryable(response):
                    return response, cut
                failure = translate(response, what)
            wait = getattr(failure, "retry_after", None)
            wait = min(8.0, 0.5 * 2**attempt) if wait is None else wait
            if attempt >= self.max_retries or wait > MAX_RETRY_WAIT or self._sleep(wait):
                raise failure
        raise AssertionError("unreachable")

    def _sleep(self, seconds: float) -> bool:
        """Wait; True when the bridge is stopping."""
        if self.stopping is None:
            time.sleep(seconds)
            return False
        return self.stopping.wait(seconds)

    def _get(self, path: str, what: str, *, job: bool = False, **params: Any) -> Json:
        response, cut = self._send(self._api, path, what, MAX_ANSWER_BYTES, params=params or None)
        if cut:
            raise SourceUnavailable(f"{what}: the answer is over {MAX_ANSWER_BYTES} bytes")
        if response.status_code != 200:
            raise translate(response, what, job=job)
        return _json_object(response, what)

    # Jobs
    def job_pages(self) -> Iterator[list[Json]]:
        streams = [self._collection(collection) for collection in FAMILIES]
        merged = heapq.merge(*streams, key=lambda job: -(job.get("created_at") or 0))
        while page := list(itertools.islice(merged, PAGE_SIZE)):
            yield page

    def _collection(self, collection: str) -> Iterator[Json]:
        what = f"list {collection}"
        walk = PageWalk(what, self.max_pages, self.stopping)
        path = f"/v1/accounts/{self.account_id}/{collection}"

        def fetch(token: str | None) -> tuple[list[Json], str | None]:
            params: dict[str, Any] = {"pageSize": PAGE_SIZE, "orderBy": "createTime desc"}
            if token:
                params["pageToken"] = token
            body = self._get(path, what, **params)
            items = body.get(collection, [])
            if not isinstance(items, list):
                raise SourceUnavailable(f"{what}: the answer has no list of jobs")
            token = body.get("nextPageToken")
            return self._accepted(items), token if isinstance(token, str) else None

        try:
            for page in paging.page_token(walk, fetch):
                yield from page
        except EndlessPaging as error:
            self._say_once(what, "api.listing_cut", error=str(error))

    def _accepted(self, resources: list[object]) -> list[Json]:
        jobs = []
        for resource in resources:
            if not isinstance(resource, dict) or resource.get("state") in GONE_STATES:
                continue
            try:
                job = job_model(resource)
            except ValueError as error:
                self._quarantine(resource.get("name"), str(error))
                continue
            self._remember(job["id"], resource)
            jobs.append(job)
        return jobs

    def _quarantine(self, name: object, reason: str) -> None:
        key = limits.truncate(str(name), 200)
        if key not in self.quarantined and len(self.quarantined) < MAX_QUARANTINED:
            self.quarantined[key] = reason
            log.warning("job.quarantined", source=self.name, job_id=key[:80], reason=reason)

    def _say_once(self, key: str, event: str, **fields: Any) -> None:
        emit = log.debug if key in self._said else log.warning
        self._said.add(key)
        emit(event, source=self.name, **fields)

    def _remember(self, run_id: str, resource: Json) -> None:
        with self._lock:
            self._snapshots.pop(run_id, None)
            self._snapshots[run_id] = resource
            while len(self._snapshots) > MAX_REMEMBERED:
                del self._snapshots[next(iter(self._snapshots))]

    def _snapshot(self, run_id: str) -> Json | None:
        with self._lock:
            return self._snapshots.get(run_id)

    def _resource(self, run_id: str) -> tuple[str, str, str]:
        try:
            account, collection, job = resource_of(run_id)
        except ValueError as error:
            raise JobNotFound(str(error)) from None
        if account != self.account_id:
            raise JobNotFound(f"job {run_id}: of account {account!r}, not {self.account_id!r}")
        return account, collection, job

    def _get_resource(self, run_id: str) -> Json:
        account, collection, job = self._resource(run_id)
        name = f"accounts/{account}/{collection}/{job}"
        resource = self._get(f"/v1/{name}", f"job {name}", job=True)
        if resource.get("name") != name:
            raise SourceUnavailable(f"job {name}: the answer is not this job")
        if resource.get("state") in GONE_STATES:
            raise JobNotFound(f"job {name}: being deleted")
        self._remember(run_id_of(name), resource)
        return resource

    def get_job(self, job_id: str) -> Json:
        return job_model(self._get_resource(job_id))

    def checkpoints(self, job_id: str) -> list[Json]:
        """None: Fireworks lists no checkpoints of managed jobs (the model is ``outputModel``)."""
        return []

    def file_content(self, file_id: str) -> bytes:
        """A dataset's content (``accounts/<a>/datasets/<id>``, the training or evaluation
        dataset a job names), read through the signed URLs of its download endpoint, its
        files joined in name order (each at most :data:`MAX_METRICS_BYTES`, cut at a line's
        end). Jobs name no result files here (their metrics come as events)."""
        what = f"dataset {file_id}"
        if not _DATASET.fullmatch(file_id):
            raise JobNotFound(f"{what}: not a Fireworks dataset (accounts/<a>/datasets/<id>)")
        body = self._get(f"/v1/{file_id}:getDownloadEndpoint", what, job=True)
        urls = body.get("filenameToSignedUrls")
        if not isinstance(urls, dict) or not urls:
            raise JobNotFound(f"{what}: the download endpoint names no files")
        parts = []
        for name in sorted(urls):
            if isinstance(urls[name], str):
                try:
                    parts.append(self._download(urls[name], what).rstrip(b"\n"))
                except _Expired:
                    raise SourceUnavailable(f"{what}: the signed URL was refused") from None
        return b"\n".join(part for part in parts if part)

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer:
        """One chat completion (``POST /inference/v1/chat/completions``, OpenAI's shape) with
        the source's key, for the samples of :mod:`bridge.evals`; no retries. A fine-tuned
        model answers only once deployed (else Fireworks refuses it, and the samples stop
        with that reason)."""
        what = f"chat with {model}"
        started = time.monotonic()
        body = samples.chat_request(model, messages, max_tokens)
        try:
            response = self._api.post("/inference/v1/chat/completions", json=body)
        except httpx.TimeoutException:
            raise SourceUnavailable(f"{what}: timed out") from None
        except httpx.HTTPError as error:
            raise SourceUnavailable(f"{what}: could not connect ({type(error).__name__})") from None
        if response.status_code != 200:
            raise translate(response, what, job=True)
        return samples.answer_of(_json_object(response, what), time.monotonic() - started)

    # Metrics
    def event_pages(self, job_id: str, first_page: int | None = None) -> Iterator[list[Json]]:
        """The job's metrics, newest first, from its metrics file or its curve (read whole:
        ``first_page`` does not apply)."""
        _, collection, _ = self._resource(job_id)
        resource = self._snapshot(job_id) or self._get_resource(job_id)
        if collection == "reinforcementFineTuningJobs":
            return newest_first(curve_events(resource.get("outputMetrics")))
        if not self._has_metrics(resource):
            return iter(())
        return newest_first(metric_events(self._metrics_file(job_id, collection, resource)))

    @staticmethod
    def _has_metrics(resource: Mapping[str, Any]) -> bool:
        """Whether training began (before, no metrics file exists)."""
        state = _text(resource.get("state")) or "JOB_STATE_UNSPECIFIED"
        status = STATUS_TABLE.get(state.lower(), "running")
        return status not in ("validating_files", "queued")

    def _metrics_file(self, job_id: str, collection: str, resource: Json) -> bytes:
        url = self._metrics_url(job_id, collection, resource, fresh=False)
        for attempt in range(2):
            if not url:
                return b""
            try:
                return self._download(url, f"metrics file of {job_id}")
            except _Expired:
                if attempt == 1:
                    break
                url = self._metrics_url(job_id, collection, None, fresh=True)
        raise SourceUnavailable(f"metrics file of {job_id}: the signed URL was refused twice")

    def _metrics_url(
        self, job_id: str, collection: str, resource: Json | None, *, fresh: bool
    ) -> str | None:
        """The metrics file's signed URL: the snapshot's (SFT) or the endpoint's (DPO);
        ``fresh`` asks the API again."""
        if collection == "supervisedFineTuningJobs":
            if fresh or resource is None:
                resource = self._get_resource(job_id)
            return _text(resource.get("metricsFileSignedUrl"))
        with self._lock:
            known = None if fresh else self._dpo_urls.get(job_id)
        if known:
            return known
        _, _, job = self._resource(job_id)
        name = f"accounts/{self.account_id}/{collection}/{job}"
        body = self._get(f"/v1/{name}:getMetricsFileEndpoint", f"metrics of {name}", job=True)
        url = _text(body.get("signedUrl"))
        with self._lock:
            if url:
                self._dpo_urls[job_id] = url
                while len(self._dpo_urls) > MAX_REMEMBERED:
                    del self._dpo_urls[next(iter(self._dpo_urls))]
        return url

    def _download(self, url: str, what: str) -> bytes:
        """The file's bytes (at most :data:`MAX_METRICS_BYTES`, cut at a line's end); a
        missing file is empty; :class:`_Expired` when the URL is refused."""
        response, cut = self._send(self._files, url, what, MAX_METRICS_BYTES)
        if response.status_code in (400, 401, 403):
            raise _Expired
        if response.status_code == 404:
            return b""
        if response.status_code != 200:
            raise SourceUnavailable(f"{what}: HTTP {response.status_code}")
        content = response.content
        if cut:
            self._say_once(what, "metrics.file_cut", what=what, bytes=MAX_METRICS_BYTES)
            content = content[: content.rfind(b"\n") + 1]
        return content

    @classmethod
    def create(
        cls,
        *,
        api_key: str,
        account_id: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        name: str = "fireworks",
    ) -> FireworksSource:
        return cls(
            api_key=api_key,
            account_id=account_id,
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
            name=name,
        )
