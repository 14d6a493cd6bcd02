"""Fireworks AI's fine-tuning API over the emulated account: the jobs whose scenario says
``provider = "fireworks"``, under one account id, read from the same plans and timelines as
OpenAI's (``bridge.emulator.views`` shows how those become OpenAI's JSON; this module does the
same for Fireworks).

What it serves (``/v1/accounts/{account}/...``, Bearer auth, the emulator's faults and latency):

- three collections, by the scenario's ``method``: ``supervised`` ->
  ``supervisedFineTuningJobs``, ``dpo`` -> ``dpoJobs``, ``reinforcement`` ->
  ``reinforcementFineTuningJobs``; each with list (``pageSize`` default 50, above 200 coerced
  to 200, an opaque ``pageToken``/``nextPageToken``, ``orderBy`` ``name`` or ``createTime``
  with an optional `` desc``, ``totalSize``), get and ``:cancel`` (``{}``);
  ``dpoJobs/{id}:getMetricsFileEndpoint`` gives ``{"signedUrl"}``, empty until training
  starts;
- ``state`` (``JOB_STATE_*``) from the timeline: validating -> ``VALIDATING``, queued ->
  ``PENDING``, running -> ``RUNNING`` (``WRITING_RESULTS`` once the last step is done),
  paused -> ``PAUSED``, then ``COMPLETED``, ``FAILED`` or ``CANCELLED``; ``status{code,
  message}`` with google.rpc codes; ``createTime``/``updateTime``/``completedTime`` in
  RFC 3339; ``outputModel`` ``accounts/{a}/models/{job id}``; ``wandbConfig`` from a
  ``wandb`` integration of the scenario;
- hyperparameters top-level on SFT jobs, in ``trainingConfig``/``lossConfig`` on DPO and RFT
  jobs (fireworks-ai 1.2.30's types);
- the metrics file as a signed URL: ``metricsFileSignedUrl`` on SFT jobs, the endpoint above
  for DPO jobs. The URL points at this emulator (``/_signed/fireworks/...``), carries its own
  expiry and signature and no Bearer key: an expired or altered URL answers 403 as a cloud
  storage signed URL does, and so does a request that also sends an ``Authorization``
  header (a signed URL never needs the API key). Every ``get`` signs a fresh URL;
- RFT metrics as the ``outputMetrics`` JSON string, and ``outputStats``;
- ``datasets/{id}:getDownloadEndpoint``: ``{"filenameToSignedUrls": {"data.jsonl": url}}``, a
  signed URL like the metrics file's to the file the dataset id names (the emulator's file id,
  lowercased), as ``client.datasets.get_download_endpoint`` gives it;
- ``POST /inference/v1/chat/completions``: the emulator's deterministic chat answers
  (:mod:`bridge.emulator.chat`), ``outputModel`` of a job answering as the fine-tuned model.

**The metrics file's shape is our decision**: Fireworks does not document it. Third-party
integrations read it as JSON lines with ``step``, ``timestamp`` and ``train/loss``,
``train/learning_rate``, ``train/grad_norm``, ``train/epoch`` (PROVIDERS.md, section 2), so a
line here is ``{"step", "timestamp" (RFC 3339), "train/loss", "train/learning_rate",
"train/grad_norm", "train/epoch"}``; DPO lines add ``train/rewards/margins``,
``train/logps/chosen`` and ``train/logps/rejected``; with an evaluation dataset, the line of
each epoch's last step adds ``eval/loss`` and ``eval/perplexity``. One line per step,
appended as the step is done, so the file grows while the job trains. ``outputMetrics`` is
likewise a guess from third-party code that reads ``curves.average.*``: ``{"curves":
{"average": {"step": [...], "reward": [...], "eval_reward": [...]}, "<grader>": {"step":
[...], "reward": [...]}}}``, columns of equal length (``null`` where a step has no value).

Steering only the emulator needs: a scenario's ``metadata`` key ``fireworks_state`` replaces
``JOB_STATE_RUNNING`` by that word (an unknown state, say), and ``fireworks_final_state``
replaces ``JOB_STATE_COMPLETED`` (``JOB_STATE_EARLY_STOPPED``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.emulator import chat, ids
from bridge.emulator.account import Account
from bridge.emulator.errors import ApiError
from bridge.emulator.metrics import StepValues, epoch_end_steps
from bridge.emulator.timeline import JobPlan, Timeline
from bridge.httpserve import Request

COLLECTIONS = {
    "supervised": "supervisedFineTuningJobs",
    "dpo": "dpoJobs",
    "reinforcement": "reinforcementFineTuningJobs",
}
METHOD_OF = {collection: method for method, collection in COLLECTIONS.items()}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Emulated seconds a signed URL stays valid.
URL_TTL = 3600.0
_LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"
_COLLECTION = "(?P<collection>supervisedFineTuningJobs|dpoJobs|reinforcementFineTuningJobs)"
_BASE = r"/v1/accounts/(?P<account>[^/:]+)/" + _COLLECTION
_JOB = _BASE + r"/(?P<job>[^/:]+)"
_SIGNED = (
    r"/_signed/fireworks/(?P<account>[^/]+)/" + _COLLECTION + r"/(?P<job>[^/]+)/metrics\.jsonl"
)
_DATASET = r"/v1/accounts/(?P<account>[^/:]+)/datasets/(?P<dataset>[^/:]+)"
_SIGNED_DATASET = r"/_signed/fireworks/(?P<account>[^/]+)/datasets/(?P<dataset>[^/]+)/data\.jsonl"


def rfc3339(seconds: float) -> str:
    """``2026-05-01T12:00:00.250000Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


class FireworksError(ApiError):
    """An error as Google-style APIs give it: ``{"error": {code, message, status}}``."""

    def __init__(self, status: int, message: str, rpc: str) -> None:
        super().__init__(status, message)
        self.rpc = rpc

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "status": self.rpc}}


def short_id(plan: JobPlan) -> str:
    """The job's id in its resource name: the scenario's id, or 8 lowercase letters/digits."""
    if plan.job.id:
        return plan.job.id
    return ids.token("fireworks", plan.id, length=8, alphabet=_LOWER)


class FireworksApi:
    """:class:`bridge.emulator.api.ProviderApi` for Fireworks, under ``account_id``."""

    public_kinds = frozenset({"metrics_file", "dataset_file"})

    def __init__(self, account: Account, account_id: str = "emulator") -> None:
        self.account = account
        self.account_id = account_id
        self.url_ttl = URL_TTL
        self._secret = f"fireworks-{account.scenario.seed}".encode()
        self.routes: Sequence[tuple[str, re.Pattern[str], str]] = [
            (method, re.compile(pattern + r"\Z"), kind)
            for method, pattern, kind in [
                ("GET", _BASE, "fw_list"),
                ("GET", _JOB, "fw_get"),
                ("POST", _JOB + ":cancel", "fw_cancel"),
                ("GET", _JOB + ":getMetricsFileEndpoint", "fw_metrics_endpoint"),
                ("GET", _SIGNED, "metrics_file"),
                ("GET", _DATASET + ":getDownloadEndpoint", "fw_dataset_endpoint"),
                ("GET", _SIGNED_DATASET, "dataset_file"),
                ("POST", r"/inference/v1/chat/completions", "fw_chat"),
            ]
        ]

    def tuned_models(self) -> set[str]:
        """``outputModel`` of every Fireworks job."""
        jobs, _ = self.account.jobs_of("fireworks")
        return {self._training_config(plan)["outputModel"] for plan, _ in jobs}

    # Dispatch
    def dispatch(
        self, kind: str, params: dict[str, str], query: dict[str, str], request: Request
    ) -> Any:
        if kind == "fw_chat":
            return chat.complete(_body(request), self.tuned_models())
        if kind == "metrics_file":
            return self._metrics_file(params, query, request)
        if kind == "dataset_file":
            return self._dataset_file(params, query, request)
        if params["account"] != self.account_id:
            raise FireworksError(
                403, f"Permission denied on account {params['account']!r}.", "PERMISSION_DENIED"
            )
        if kind == "fw_dataset_endpoint":
            return self._dataset_endpoint(params["dataset"], request)
        collection = params["collection"]
        if kind == "fw_list":
            return self._list(collection, query, request)
        plan, timeline, now = self._find(collection, params["job"])
        if kind == "fw_get":
            return self.job_object(plan, timeline, now, request)
        if kind == "fw_cancel":
            if timeline.status_at(now) in ("succeeded", "failed", "cancelled"):
                raise FireworksError(
                    400, "The job is already in a terminal state.", "FAILED_PRECONDITION"
                )
            self.account.intervene_as("fireworks", plan.id, "cancel")
            return {}
        if collection != "dpoJobs":
            raise FireworksError(404, "Method not found.", "NOT_FOUND")
        started = timeline.started_at is not None and timeline.started_at <= now
        return {"signedUrl": self._signed_url(plan, now, request) if started else ""}

    def _find(self, collection: str, job: str) -> tuple[JobPlan, Timeline, float]:
        jobs, now = self.account.jobs_of("fireworks")
        for plan, timeline in jobs:
            if COLLECTIONS[plan.job.method] == collection and short_id(plan) == job:
                return plan, timeline, now
        name = f"accounts/{self.account_id}/{collection}/{job}"
        raise FireworksError(404, f"Job {name!r} not found.", "NOT_FOUND")

    # Listing
    def _list(self, collection: str, query: dict[str, str], request: Request) -> dict[str, Any]:
        size = _page_size(query.get("pageSize"))
        start = _offset(query.get("pageToken"))
        jobs, now = self.account.jobs_of("fireworks")
        mine = [(p, t) for p, t in jobs if COLLECTIONS[p.job.method] == collection]
        mine.sort(key=_order_key(query.get("orderBy", "")), reverse=_descending(query))
        page = mine[start : start + size]
        body: dict[str, Any] = {
            collection: [self.job_object(p, t, now, request) for p, t in page],
            "totalSize": len(mine),
        }
        if start + size < len(mine):
            body["nextPageToken"] = _token(start + size)
        return body

    # Jobs
    def name_of(self, plan: JobPlan) -> str:
        return f"accounts/{self.account_id}/{COLLECTIONS[plan.job.method]}/{short_id(plan)}"

    def job_object(
        self, plan: JobPlan, timeline: Timeline, now: float, request: Request
    ) -> dict[str, Any]:
        job = plan.job
        status = timeline.status_at(now) or "validating_files"
        done = _steps_done(timeline, now)
        body: dict[str, Any] = {
            "name": self.name_of(plan),
            "displayName": job.suffix or f"{job.method} job {short_id(plan)}",
            "createTime": rfc3339(plan.created),
            "createdBy": "emulator@example.com",
            "state": _state(plan, status, done),
            "dataset": f"accounts/{self.account_id}/datasets/{plan.training_file.lower()}",
        }
        terminal = status in ("succeeded", "failed", "cancelled")
        if terminal and timeline.finished_at is not None:
            body["completedTime"] = rfc3339(timeline.finished_at)
        body["status"] = _status(timeline, status)
        if job.method == "supervised":
            body["updateTime"] = rfc3339(_last_change(timeline, now))
            body |= self._training_config(plan)
            body["earlyStop"] = job.metadata.get("fireworks_final_state") is not None
            body["jobProgress"] = _progress(plan, done)
            body["estimatedCost"] = {"currencyCode": "USD", "units": "3", "nanos": 250000000}
            if plan.validation_file:
                body["evaluationDataset"] = self._dataset(plan.validation_file)
            if timeline.started_at is not None and timeline.started_at <= now:
                body["metricsFileSignedUrl"] = self._signed_url(plan, now, request)
        else:
            body["trainingConfig"] = self._training_config(plan)
            body["lossConfig"] = {
                "method": "DPO" if job.method == "dpo" else "GRPO",
                "klBeta": float(job.hyperparameters.get("beta", 0.1)),
            }
        if job.method == "reinforcement":
            body |= self._reinforcement(plan, timeline, now, done)
        wandb = _wandb_config(plan)
        if wandb is not None:
            body["wandbConfig"] = wandb
        return body

    def _dataset(self, file_id: str) -> str:
        return f"accounts/{self.account_id}/datasets/{file_id.lower()}"

    def _training_config(self, plan: JobPlan) -> dict[str, Any]:
        job = plan.job
        config: dict[str, Any] = {
            "baseModel": job.model,
            "outputModel": f"accounts/{self.account_id}/models/{short_id(plan)}",
            "epochs": job.n_epochs,
            "learningRate": _learning_rate(plan),
            "loraRank": int(job.hyperparameters.get("loraRank", 8)),
            "batchSize": job.batch_size * 4096,
            "maxContextLength": 8192,
            "learningRateWarmupSteps": _warmup(plan),
            "gradientAccumulationSteps": 1,
        }
        return config

    def _reinforcement(
        self, plan: JobPlan, timeline: Timeline, now: float, done: int
    ) -> dict[str, Any]:
        job = plan.job
        steps = _visible_steps(timeline, now)
        body: dict[str, Any] = {
            "evaluator": f"accounts/{self.account_id}/evaluators/{job.graders[0]}",
            "inferenceParameters": {
                "maxOutputTokens": 2048,
                "temperature": 1.0,
                "topP": 1.0,
                "responseCandidatesCount": 4,
            },
            "jobProgress": _progress(plan, done),
            "outputMetrics": json.dumps(output_metrics(plan, steps)),
            "outputStats": json.dumps({"rollouts": 4 * job.batch_size * len(steps)}),
            "acceleratorSeconds": {"NVIDIA_H100_80GB": str(int(len(steps) * job.step_seconds))},
        }
        if plan.validation_file:
            body["evaluationDataset"] = self._dataset(plan.validation_file)
        return body

    # The metrics file
    def _signature(self, path: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{path}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def _signed_url(self, plan: JobPlan, now: float, request: Request) -> str:
        collection = COLLECTIONS[plan.job.method]
        path = f"/_signed/fireworks/{self.account_id}/{collection}/{short_id(plan)}/metrics.jsonl"
        return self._signed(path, now, request)

    def _signed(self, path: str, now: float, request: Request) -> str:
        expires = int(now + self.url_ttl)
        host = request.headers.get("host", "127.0.0.1")
        return f"http://{host}{path}?Expires={expires}&Signature={self._signature(path, expires)}"

    def _check_signed(self, path: str, query: dict[str, str], request: Request) -> None:
        if "authorization" in request.headers:
            raise FireworksError(
                400, "A signed URL takes no Authorization header.", "INVALID_ARGUMENT"
            )
        try:
            expires = int(query.get("Expires", ""))
        except ValueError:
            raise FireworksError(403, "Invalid signed URL.", "PERMISSION_DENIED") from None
        if not hmac.compare_digest(query.get("Signature", ""), self._signature(path, expires)):
            raise FireworksError(403, "The signature does not match.", "PERMISSION_DENIED")
        if self.account.now() > expires:
            raise FireworksError(403, "The signed URL has expired.", "PERMISSION_DENIED")

    def _metrics_file(
        self, params: dict[str, str], query: dict[str, str], request: Request
    ) -> bytes:
        path = "/_signed/fireworks/{account}/{collection}/{job}/metrics.jsonl".format(**params)
        self._check_signed(path, query, request)
        plan, timeline, now = self._find(params["collection"], params["job"])
        return metrics_file(plan, _visible_steps(timeline, now))

    # Datasets: a download endpoint that names one signed URL per file of the dataset
    def _dataset_endpoint(self, dataset: str, request: Request) -> dict[str, Any]:
        self._file_of(dataset)
        path = f"/_signed/fireworks/{self.account_id}/datasets/{dataset}/data.jsonl"
        url = self._signed(path, self.account.now(), request)
        return {"filenameToSignedUrls": {"data.jsonl": url}}

    def _dataset_file(
        self, params: dict[str, str], query: dict[str, str], request: Request
    ) -> bytes:
        path = "/_signed/fireworks/{account}/datasets/{dataset}/data.jsonl".format(**params)
        self._check_signed(path, query, request)
        return self.account.file_content(self._file_of(params["dataset"]))

    def _file_of(self, dataset: str) -> str:
        try:
            return self.account.file_id_of(dataset)
        except ApiError:
            name = f"accounts/{self.account_id}/datasets/{dataset}"
            raise FireworksError(404, f"Dataset {name!r} not found.", "NOT_FOUND") from None


def _body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"{}")
    except ValueError:
        raise FireworksError(400, "The body is not JSON.", "INVALID_ARGUMENT") from None


# What the timeline says, in Fireworks' words
def _visible_steps(timeline: Timeline, now: float) -> list[tuple[float, int]]:
    """(time, step) of every step done by ``now``."""
    return [
        (event.time, int(event.data["step"]))
        for event in timeline.events
        if event.time <= now and event.type == "metrics" and event.data is not None
    ]


def _steps_done(timeline: Timeline, now: float) -> int:
    return max((step for _, step in _visible_steps(timeline, now)), default=0)


def _last_change(timeline: Timeline, now: float) -> float:
    times = [event.time for event in timeline.events if event.time <= now]
    return max(times, default=0.0)


def _state(plan: JobPlan, status: str, done: int) -> str:
    job = plan.job
    if status == "running":
        if done >= job.n_steps:
            return "JOB_STATE_WRITING_RESULTS"
        return job.metadata.get("fireworks_state", "JOB_STATE_RUNNING")
    if status == "succeeded":
        return job.metadata.get("fireworks_final_state", "JOB_STATE_COMPLETED")
    return {
        "validating_files": "JOB_STATE_VALIDATING",
        "queued": "JOB_STATE_PENDING",
        "paused": "JOB_STATE_PAUSED",
        "failed": "JOB_STATE_FAILED",
        "cancelled": "JOB_STATE_CANCELLED",
    }[status]


def _status(timeline: Timeline, status: str) -> dict[str, str]:
    if status == "failed" and timeline.error is not None:
        code = str(timeline.error.get("code") or "")
        rpc = code if code.isupper() else _RPC_OF.get(code, "INTERNAL")
        return {"code": rpc, "message": str(timeline.error.get("message") or "")}
    if status == "cancelled":
        return {"code": "CANCELLED", "message": "The job was cancelled."}
    return {"code": "OK", "message": ""}


_RPC_OF = {"invalid_training_file": "INVALID_ARGUMENT", "quota": "RESOURCE_EXHAUSTED"}


def _progress(plan: JobPlan, done: int) -> dict[str, int]:
    job = plan.job
    epoch = min(job.n_epochs - 1, done * job.n_epochs // job.n_steps)
    return {"percent": done * 100 // job.n_steps, "epoch": epoch}


def _wandb_config(plan: JobPlan) -> dict[str, Any] | None:
    for integration in plan.job.integrations:
        settings = integration.get("wandb")
        if integration.get("type") == "wandb" and isinstance(settings, dict):
            return {
                "enabled": settings.get("enabled", True),
                "apiKey": "wandb-secret-key-of-the-job",
                "project": settings.get("project"),
                "entity": settings.get("entity"),
                "runId": settings.get("run_id", short_id(plan)),
            }
    return None


# Metric values
def _learning_rate(plan: JobPlan) -> float:
    value = plan.job.hyperparameters.get("learningRate", 1e-4)
    return float(value) if isinstance(value, int | float) else 1e-4


def _warmup(plan: JobPlan) -> int:
    return max(1, plan.job.n_steps // 10)


def _lr_at(plan: JobPlan, step: int) -> float:
    base, warmup, total = _learning_rate(plan), _warmup(plan), plan.job.n_steps
    if step <= warmup:
        return round(base * step / warmup, 12)
    return round(base * (total - step) / max(1, total - warmup), 12)


def metrics_line(plan: JobPlan, time: float, values: StepValues) -> dict[str, Any]:
    """One line of the metrics file (see the module docstring)."""
    job, step = plan.job, values.step
    line: dict[str, Any] = {
        "step": step,
        "timestamp": rfc3339(time),
        "train/loss": values.train_loss,
        "train/learning_rate": _lr_at(plan, step),
        "train/grad_norm": round(0.3 + 0.9 * values.train_loss + 0.05 * math.sin(step), 5),
        "train/epoch": round(step * job.n_epochs / job.n_steps, 4),
    }
    if job.method == "dpo":
        line["train/rewards/margins"] = values.dpo_margin
        line["train/logps/chosen"] = values.chosen_logprob
        line["train/logps/rejected"] = values.rejected_logprob
    if plan.validation_file and step in epoch_end_steps(job):
        loss = values.full_valid_loss if values.full_valid_loss is not None else values.train_loss
        line["eval/loss"] = loss
        line["eval/perplexity"] = round(math.exp(loss), 5)
    return line


def metrics_file(plan: JobPlan, steps: list[tuple[float, int]]) -> bytes:
    """The file's bytes once ``steps`` are done: one JSON line per step."""
    lines = [json.dumps(metrics_line(plan, t, plan.series[s - 1])) for t, s in steps]
    return "".join(line + "\n" for line in lines).encode()


def output_metrics(plan: JobPlan, steps: list[tuple[float, int]]) -> dict[str, Any]:
    """RFT's ``outputMetrics`` (parsed) once ``steps`` are done: columns per curve."""
    values = [plan.series[s - 1] for _, s in steps]
    graders = plan.job.graders
    average: dict[str, list[Any]] = {
        "step": [v.step for v in values],
        "reward": [],
        "eval_reward": [],
    }
    for v in values:
        average["reward"].append(round(sum(g.train for g in v.graders) / len(graders), 5))
        valids = [g.valid for g in v.graders if g.valid is not None]
        average["eval_reward"].append(round(sum(valids) / len(valids), 5) if valids else None)
    curves: dict[str, Any] = {"average": average}
    for index, name in enumerate(graders):
        curves[name] = {
            "step": [v.step for v in values],
            "reward": [v.graders[index].train for v in values],
        }
    return {"curves": curves}


# Paging
def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise FireworksError(400, f"Invalid pageSize {raw!r}.", "INVALID_ARGUMENT") from None
    if size < 0:
        raise FireworksError(400, "pageSize must not be negative.", "INVALID_ARGUMENT")
    return min(size, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded))["o"]
    except (ValueError, KeyError, TypeError):
        raise FireworksError(400, "Invalid pageToken.", "INVALID_ARGUMENT") from None
    if not isinstance(offset, int) or offset < 0:
        raise FireworksError(400, "Invalid pageToken.", "INVALID_ARGUMENT")
    return offset


def _order_key(order_by: str) -> Any:
    field = order_by.strip().split(" ")[0] if order_by.strip() else "name"
    if field == "createTime":
        return lambda item: (item[0].created, item[0].index)
    if field == "name":
        return lambda item: short_id(item[0])
    raise FireworksError(400, f"Unsupported orderBy {order_by!r}.", "INVALID_ARGUMENT")


def _descending(query: dict[str, str]) -> bool:
    return query.get("orderBy", "").strip().endswith(" desc")
