"""GraphQL operations a writing run sends: connect, upsert, resume, run files, alerts.

Each handler answers with the fields wandb-core 0.31 reads (its query texts are in the
wandb-core binary). Runs are found by `entity/project/name`; a missing entity means the
server's default entity and a missing project means `uncategorized`, as on W&B.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from bridge.testing.wandb_server.graphql import Context, GraphQLError, Handler
from bridge.testing.wandb_server.runs import (
    EVENTS,
    HISTORY,
    OUTPUT,
    AlertRecord,
    RunRecord,
    apply_upsert,
    wrapped_config,
)

DEFAULT_PROJECT = "uncategorized"
TAIL_LINES = 10


def run_path(context: Context, entity: Any, project: Any) -> tuple[str, str]:
    return (str(entity) if entity else context.entity, str(project) if project else DEFAULT_PROJECT)


def project_json(entity: str, project: str) -> dict[str, Any]:
    return {
        "id": f"project:{entity}/{project}",
        "name": project,
        "entity": {"id": f"entity:{entity}", "name": entity},
    }


def find_run(context: Context, entity: Any, project: Any, name: Any) -> RunRecord | None:
    e, p = run_path(context, entity, project)
    return context.store.run(e, p, str(name))


def viewer(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    entity = context.entity
    return {
        "viewer": {
            "id": f"user:{entity}",
            "entity": entity,
            "username": entity,
            "name": entity,
            "email": f"{entity}@localhost",
            "admin": False,
            "flags": "{}",
            "photoUrl": None,
            "apiKeys": {"edges": []},
            "userEntity": {"id": f"entity:{entity}", "name": entity},
            "teams": {"edges": [{"node": {"name": entity}}]},
        }
    }


def server_features(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """No optional server features: the client then takes its plainest code paths."""
    return {"serverInfo": {"features": []}}


def server_info(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {
        "serverInfo": {
            "cliVersionInfo": {},
            "latestLocalVersionInfo": None,
            "features": [],
        }
    }


def no_organization(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"entity": {"organization": None, "xxhashDigestsEnabled": False}}


def no_org_flags(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"organization": None}


def upsert_bucket(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    store = context.store
    with store.change():
        run = None
        if variables.get("id"):
            run = store.run_by_storage_id(str(variables["id"]))
        inserted = False
        if run is None:
            if not variables.get("name"):
                raise GraphQLError("upsertBucket needs a name or a known id")
            entity, project = run_path(context, variables.get("entity"), variables.get("project"))
            run, inserted = store.ensure_run(entity, project, str(variables["name"]))
        apply_upsert(run, variables, time.time())
    return {"upsertBucket": {"bucket": bucket_json(run), "inserted": inserted}}


def bucket_json(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.storage_id,
        "name": run.run_id,
        "displayName": run.display_name,
        "description": run.notes,
        "config": json.dumps(wrapped_config(run)),
        "sweepName": None,
        "project": project_json(run.entity, run.project),
        "historyLineCount": run.line_count(HISTORY),
    }


def resume_status(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    entity, project = run_path(context, variables.get("entity"), variables.get("project"))
    run = context.store.run(entity, project, str(variables.get("name")))
    model = project_json(entity, project)
    model["bucket"] = None if run is None else resume_bucket(run)
    return {"model": model}


def resume_bucket(run: RunRecord) -> dict[str, Any]:
    with_t = {"t": run.wandb_config["t"]} if "t" in run.wandb_config else {}
    return {
        "id": run.storage_id,
        "name": run.run_id,
        "summaryMetrics": json.dumps(run.summary),
        "displayName": run.display_name,
        "logLineCount": run.line_count(OUTPUT),
        "historyLineCount": run.line_count(HISTORY),
        "eventsLineCount": run.line_count(EVENTS),
        "historyTail": json.dumps(run.lines(HISTORY)[-TAIL_LINES:]),
        "eventsTail": json.dumps(run.lines(EVENTS)[-TAIL_LINES:]),
        "config": json.dumps(wrapped_config(run)),
        "tags": run.tags,
        "notes": run.notes,
        "wandbConfig": json.dumps(with_t),
    }


def create_run_files(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    entity, project = run_path(context, variables.get("entity"), variables.get("project"))
    name = str(variables.get("run"))
    run = context.store.run(entity, project, name)
    if run is None:
        raise GraphQLError(f"run {entity}/{project}/{name} not found")
    files = [str(f) for f in variables.get("files") or []]
    prefix = f"{context.base_url}/storage/runs/{quote(entity)}/{quote(project)}/{quote(name)}/"
    return {
        "createRunFiles": {
            "runID": run.storage_id,
            "uploadHeaders": [],
            "files": [{"name": f, "uploadUrl": prefix + quote(f)} for f in files],
        }
    }


def alert(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    store = context.store
    with store.change():
        run = find_run(
            context, variables.get("entityName"), variables.get("projectName"), variables["runName"]
        )
        if run is None:
            raise GraphQLError(f"run {variables['runName']} not found")
        run.alerts.append(
            AlertRecord(
                title=str(variables.get("title")),
                text=str(variables.get("text")),
                severity=str(variables.get("severity") or "INFO"),
                wait_duration=variables.get("waitDuration"),
            )
        )
    return {"notifyScriptableRunAlert": {"success": True}}


def _project_run(context: Context, variables: dict[str, Any]) -> RunRecord | None:
    name = variables.get("run") or variables.get("runId") or variables.get("name")
    entity = variables.get("entity") or variables.get("entityName")
    project = variables.get("project") or variables.get("projectName")
    return find_run(context, entity, project, name)


def stopped_status(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    run = _project_run(context, variables)
    return {"project": {"run": None if run is None else {"stopped": False}}}


def run_state(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    run = _project_run(context, variables)
    return {"project": {"run": None if run is None else {"id": run.storage_id, "state": run.state}}}


def run_info(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    run = _project_run(context, variables)
    if run is None:
        return {"project": {"run": None}}
    return {
        "project": {
            "run": {"displayName": run.display_name, "summaryMetrics": json.dumps(run.summary)}
        }
    }


def mark_files_uploaded(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"markRunFilesUploaded": {"success": True}}


HANDLERS: dict[str, Handler] = {
    "Viewer": viewer,
    "{viewer}": viewer,
    "GetDefaultEntity": viewer,
    "ServerFeaturesQuery": server_features,
    "ServerInfo": server_info,
    "OrganizationCoreWeaveOrganizationID": no_organization,
    "XXHashDigestsEnabled": no_organization,
    "FetchOrgEntityFromEntity": no_organization,
    "OrgFeatureFlags": no_org_flags,
    "UpsertBucket": upsert_bucket,
    "RunResumeStatus": resume_status,
    "CreateRunFiles": create_run_files,
    "NotifyScriptableRunAlert": alert,
    "RunStoppedStatus": stopped_status,
    "RunState": run_state,
    "QueryRunInfo": run_info,
    "MarkRunFilesUploaded": mark_files_uploaded,
}
