"""GraphQL operations of the Public API (`wandb.Api()`): runs, run lists, history reads.

History is served from the lines the server holds, never sampled down: `samples` caps a page but
every row is returned when the page is large enough. There is no exported parquet, so
`RunParquetHistory` answers empty lists and wandb-core reads the live pages (`HistoryPage` when
all keys are wanted, `SampledHistoryPage` for some keys: only rows that have every key, as W&B
does). `api.runs(filters=...)` understands the MongoDB-style operators W&B documents.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from bridge.testing.wandb_server.graphql import Context, Handler
from bridge.testing.wandb_server.runs import (
    EVENTS,
    HISTORY,
    RunRecord,
    history_keys,
    wrapped_config,
)
from bridge.testing.wandb_server.sdk_ops import find_run, run_path

PAGE_SIZE = 50


def _time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def run_json(run: RunRecord) -> dict[str, Any]:
    """A `Run` node with the fields of the SDK's `RunFragment`."""
    return {
        "id": run.storage_id,
        "projectId": "1",
        "tags": run.tags,
        "name": run.run_id,
        "displayName": run.display_name,
        "sweepName": None,
        "state": run.state,
        "config": json.dumps(wrapped_config(run)),
        "group": run.group,
        "jobType": run.job_type,
        "commit": None,
        "readOnly": False,
        "createdAt": _time(run.created_at),
        "heartbeatAt": _time(run.heartbeat_at),
        "description": run.notes,
        "notes": run.notes,
        "systemMetrics": "{}",
        "summaryMetrics": json.dumps(run.summary),
        "historyLineCount": run.line_count(HISTORY),
        "user": {"name": run.entity, "username": run.entity},
        "historyKeys": history_keys(run),
    }


def _wanted_run(context: Context, variables: dict[str, Any]) -> RunRecord | None:
    name = variables.get("name") or variables.get("run") or variables.get("runName")
    return find_run(context, variables.get("entity"), variables.get("project"), name)


def run(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    found = _wanted_run(context, variables)
    return {"project": {"run": None if found is None else run_json(found)}}


def runs(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    entity, project = run_path(context, variables.get("entity"), variables.get("project"))
    filters = variables.get("filters")
    wanted = json.loads(filters) if isinstance(filters, str) else filters or {}
    with context.store.lock:
        found = [
            r
            for (e, p, _), r in context.store.runs.items()
            if (e, p) == (entity, project) and matches(r, wanted)
        ]
    found.sort(key=lambda r: r.created_at, reverse=True)
    start = int(variables.get("cursor") or 0)
    per_page = int(variables.get("perPage") or PAGE_SIZE)
    page = found[start : start + per_page]
    edges = [{"node": run_json(r), "cursor": str(start + i + 1)} for i, r in enumerate(page)]
    end = start + len(page)
    return {
        "project": {
            "internalId": "1",
            "runCount": len(found),
            "readOnly": False,
            "runs": {
                "edges": edges,
                "pageInfo": {"endCursor": str(end), "hasNextPage": end < len(found)},
            },
        }
    }


def _field(run: RunRecord, name: str) -> Any:
    if name.startswith("config."):
        value: Any = run.config
        for part in name.removeprefix("config.").removesuffix(".value").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    if name.startswith(("summary_metrics.", "summaryMetrics.")):
        return run.summary.get(name.split(".", 1)[1])
    return {
        "name": run.run_id,
        "id": run.run_id,
        "displayName": run.display_name,
        "display_name": run.display_name,
        "state": run.state,
        "tags": run.tags,
        "group": run.group,
        "jobType": run.job_type,
        "notes": run.notes,
    }.get(name)


def _compare(value: Any, condition: Any) -> bool:
    if not isinstance(condition, dict):
        if isinstance(value, list):
            return condition in value
        return bool(value == condition)
    results = []
    for op, arg in condition.items():
        values = value if isinstance(value, list) else [value]
        if op == "$eq":
            results.append(_compare(value, arg))
        elif op == "$ne":
            results.append(not _compare(value, arg))
        elif op == "$in":
            results.append(any(v in arg for v in values))
        elif op == "$nin":
            results.append(not any(v in arg for v in values))
        elif op == "$exists":
            results.append((value is not None) == bool(arg))
        elif op == "$regex":
            results.append(any(isinstance(v, str) and bool(re.search(arg, v)) for v in values))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            results.append(_ordered(op, value, arg))
        else:
            results.append(False)
    return all(results)


def _ordered(op: str, value: Any, arg: Any) -> bool:
    try:
        if op == "$gt":
            return bool(value > arg)
        if op == "$gte":
            return bool(value >= arg)
        if op == "$lt":
            return bool(value < arg)
        return bool(value <= arg)
    except TypeError:
        return False


def matches(run: RunRecord, filters: dict[str, Any]) -> bool:
    """Whether a run passes W&B's MongoDB-style run filters."""
    for key, condition in filters.items():
        if key == "$and":
            ok = all(matches(run, f) for f in condition)
        elif key == "$or":
            ok = any(matches(run, f) for f in condition)
        elif key == "$nor":
            ok = not any(matches(run, f) for f in condition)
        else:
            ok = _compare(_field(run, key), condition)
        if not ok:
            return False
    return True


def run_history_keys(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    found = _wanted_run(context, variables)
    node: dict[str, Any] | None = None if found is None else {"historyKeys": history_keys(found)}
    return {"project": {"run": node}}


def parquet_history(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    found = _wanted_run(context, variables)
    if found is None:
        return {"project": {"run": None}}
    return {"project": {"run": {"parquetHistory": {"parquetUrls": [], "liveData": []}}}}


def _in_range(row: dict[str, Any], low: Any, high: Any, high_inclusive: bool) -> bool:
    step = row.get("_step")
    if not isinstance(step, int | float):
        return False
    if low is not None and step < low:
        return False
    if high is None:
        return True
    return bool(step <= high) if high_inclusive else bool(step < high)


def history_page(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """`history(minStep, maxStep, samples)` (max exclusive) and `RunFullHistory(samples)`."""
    found = _wanted_run(context, variables)
    if found is None:
        return {"project": {"run": None}}
    low, high = variables.get("minStep"), variables.get("maxStep")
    limit = variables.get("pageSize") or variables.get("samples")
    lines = [
        line
        for line, row in zip(found.history_lines, found.history, strict=True)
        if (low is None and high is None) or _in_range(row, low, high, high_inclusive=False)
    ]
    if limit is not None:
        lines = lines[: int(limit)]
    return {"project": {"run": {"history": lines, "events": found.lines(EVENTS)}}}


def sampled_history(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """`sampledHistory(specs)`: one list per spec of rows holding all its keys (max inclusive)."""
    found = _wanted_run(context, variables)
    if found is None:
        return {"project": {"run": None}}
    specs = variables.get("specs") or [variables.get("spec")]
    answers = []
    for raw in specs:
        spec = json.loads(raw) if isinstance(raw, str) else raw or {}
        keys = list(spec.get("keys") or [])
        rows = [
            {k: row[k] for k in keys}
            for row in found.history
            if all(k in row for k in keys)
            and _in_range(row, spec.get("minStep"), spec.get("maxStep"), high_inclusive=True)
        ]
        if spec.get("samples") is not None:
            rows = rows[: int(spec["samples"])]
        answers.append(rows)
    return {"project": {"run": {"sampledHistory": answers}}}


HANDLERS: dict[str, Handler] = {
    "Run": run,
    "Runs": runs,
    "RunHistoryKeys": run_history_keys,
    "RunParquetHistory": parquet_history,
    "HistoryPage": history_page,
    "RunFullHistory": history_page,
    "SampledHistoryPage": sampled_history,
    "RunSampledHistory": sampled_history,
}
