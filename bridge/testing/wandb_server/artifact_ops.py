"""GraphQL operations of `log_artifact` / `use_artifact`, and the blobs they upload.

An artifact is created PENDING with its aliases (plus `latest`), gets a manifest whose JSON is
uploaded to a `/storage/artifacts/...` URL and parsed into entries, gets its files' upload URLs,
and is committed. A collection's versions are numbered from 0 in creation order; creating one
whose digest equals the newest committed version of its collection returns that version,
COMMITTED, as W&B does (the client then skips the upload).
"""

from __future__ import annotations

import datetime
import json
from typing import Any
from urllib.parse import quote

from bridge.testing.wandb_server.graphql import Context, GraphQLError, Handler
from bridge.testing.wandb_server.runs import ArtifactRecord
from bridge.testing.wandb_server.sdk_ops import find_run, run_path

MANIFEST_PREFIX = "/storage/artifacts/"


def _artifact(context: Context, ident: Any) -> ArtifactRecord:
    artifact = context.store.artifact(str(ident))
    if artifact is None:
        raise GraphQLError(f"artifact {ident} not found")
    return artifact


def _artifact_json(artifact: ArtifactRecord, previous: ArtifactRecord | None) -> dict[str, Any]:
    """`latestArtifact` is the version before this one (the base of an incremental manifest)."""
    return {
        "id": artifact.id,
        "state": artifact.state,
        "digest": artifact.digest,
        "versionIndex": artifact.version,
        "artifactSequence": {
            "id": f"seq:{artifact.name}",
            "latestArtifact": None if previous is None else {"id": previous.id},
        },
    }


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def artifact_fragment(context: Context, ident: str) -> dict[str, Any] | None:
    """An artifact with the fields of the SDK's `ArtifactFragment`."""
    with context.store.lock:
        found = context.store.artifacts.get(ident)
    if found is None:
        return None
    (entity, project, _), artifact = found
    project_info = {
        "id": f"project:{entity}/{project}",
        "internalId": "1",
        "name": project,
        "entity": {"name": entity},
    }
    collection = {"__typename": "ArtifactSequence", "name": artifact.name, "project": project_info}
    return {
        "__typename": "Artifact",
        "id": artifact.id,
        "artifactSequence": collection,
        "versionIndex": artifact.version,
        "artifactType": {"name": artifact.type},
        "description": artifact.description,
        "metadata": json.dumps(artifact.metadata),
        "ttlDurationSeconds": -1,
        "ttlIsInherited": True,
        "tags": [],
        "historyStep": None,
        "state": artifact.state,
        "size": sum(int(e.get("size") or 0) for e in artifact.entries.values()),
        "digest": artifact.digest,
        "digestAlgorithm": "MANIFEST_MD5",
        "commitHash": artifact.digest[:20],
        "fileCount": len(artifact.entries),
        "createdAt": _when(0),
        "updatedAt": None,
        "aliases": [
            {
                "__typename": "ArtifactAlias",
                "id": f"alias:{artifact.id}:{alias}",
                "alias": alias,
                "artifactCollection": {
                    "__typename": "ArtifactSequence",
                    "name": artifact.name,
                    "project": project_info,
                },
            }
            for alias in artifact.aliases
        ],
    }


def artifact_by_id(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"artifact": artifact_fragment(context, str(variables.get("id")))}


def resolve(context: Context, entity: str, project: str, name: str) -> ArtifactRecord | None:
    """`collection:alias` or `collection:vN` (no tag means `latest`)."""
    collection, _, tag = name.partition(":")
    tag = tag or "latest"
    for artifact in reversed(context.store.collection(entity, project, collection)):
        if tag == f"v{artifact.version}" or tag in artifact.aliases:
            return artifact
    return None


def membership_by_name(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    entity, project = run_path(context, variables.get("entity"), variables.get("project"))
    artifact = resolve(context, entity, project, str(variables.get("name")))
    fragment = None if artifact is None else artifact_fragment(context, artifact.id)
    if fragment is None:
        return {"project": {"artifactCollectionMembership": None}}
    membership = {
        "__typename": "ArtifactCollectionMembership",
        "id": f"membership:{fragment['id']}",
        "versionIndex": fragment["versionIndex"],
        "createdAt": fragment["createdAt"],
        "aliases": [
            {k: v for k, v in alias.items() if k != "artifactCollection"}
            for alias in fragment["aliases"]
        ],
        "artifactCollection": fragment["artifactSequence"],
        "artifact": fragment,
    }
    return {"project": {"artifactCollectionMembership": membership}}


def artifact_type(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """The type of `name:alias` in a project, so that `log_artifact` can check it."""
    entity, project = run_path(context, variables.get("entity"), variables.get("project"))
    name = str(variables.get("name") or "").split(":", 1)[0]
    versions = context.store.collection(entity, project, name)
    found = {"artifactType": {"name": versions[-1].type}} if versions else None
    return {"project": {"artifact": found}}


def create_artifact(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    spec = variables.get("input") or variables
    store = context.store
    with store.change():
        run = find_run(context, spec.get("entityName"), spec.get("projectName"), spec["runName"])
        if run is None:
            raise GraphQLError(f"run {spec['runName']} not found")
        name = str(spec["artifactCollectionName"])
        versions = store.collection(run.entity, run.project, name)
        aliases = [str(a["alias"]) for a in spec.get("aliases") or [] if a.get("alias")]
        latest = versions[-1] if versions else None
        if latest and latest.state == "COMMITTED" and latest.digest == spec.get("digest"):
            latest.aliases = _merged(latest.aliases, aliases)
            return {"createArtifact": {"artifact": _artifact_json(latest, latest)}}
        for version in versions:
            version.aliases = [a for a in version.aliases if a not in (*aliases, "latest")]
        metadata = spec.get("metadata")
        artifact = ArtifactRecord(
            id=store.next_id("Artifact"),
            name=name,
            type=str(spec.get("artifactTypeName")),
            version=len(versions),
            digest=str(spec.get("digest")),
            aliases=_merged(["latest"], aliases),
            description=spec.get("description"),
            metadata=json.loads(metadata) if isinstance(metadata, str) else metadata or {},
            client_id=spec.get("clientID"),
            sequence_client_id=spec.get("sequenceClientID"),
        )
        store.add_artifact(run, artifact)
    return {"createArtifact": {"artifact": _artifact_json(artifact, latest)}}


def _merged(old: list[str], new: list[str]) -> list[str]:
    return old + [a for a in new if a not in old]


def _manifest_json(context: Context, artifact_id: str) -> dict[str, Any]:
    url = f"{context.base_url}{MANIFEST_PREFIX}{quote(artifact_id)}/wandb_manifest.json"
    return {
        "id": f"manifest:{artifact_id}",
        "file": {"id": f"file:{artifact_id}", "uploadUrl": url, "uploadHeaders": []},
    }


def create_manifest(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    artifact = _artifact(context, variables.get("artifactID"))
    return {"createArtifactManifest": {"artifactManifest": _manifest_json(context, artifact.id)}}


def update_manifest(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    ident = str(variables.get("artifactManifestID") or "").removeprefix("manifest:")
    artifact = _artifact(context, ident)
    if variables.get("digest"):
        with context.store.change():
            artifact.digest = str(variables["digest"])
    return {"updateArtifactManifest": {"artifactManifest": _manifest_json(context, artifact.id)}}


def create_files(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    spec = variables.get("input") or variables
    edges = []
    for item in spec.get("artifactFiles") or []:
        artifact = _artifact(context, item.get("artifactID"))
        name = str(item.get("name"))
        url = f"{context.base_url}{MANIFEST_PREFIX}{quote(artifact.id)}/files/{quote(name)}"
        node: dict[str, Any] = {
            "storagePath": f"artifacts/{artifact.id}/{name}",
            "uploadUrl": url,
            "uploadHeaders": [],
            "uploadMultipartUrls": None,
            "artifact": {"id": artifact.id},
        }
        edges.append({"node": node})
    return {"createArtifactFiles": {"files": {"edges": edges}}}


def commit(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    artifact = _artifact(context, variables.get("artifactID"))
    with context.store.change():
        artifact.state = "COMMITTED"
    return {"commitArtifact": {"artifact": {"id": artifact.id, "digest": artifact.digest}}}


def use_artifact(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    spec = variables.get("input") or variables
    ident = spec.get("artifactID")
    with context.store.change():
        run = find_run(context, spec.get("entityName"), spec.get("projectName"), spec["runName"])
        if run is not None and ident:
            run.used_artifacts.append(str(ident))
    return {"useArtifact": {"artifact": {"id": ident}}}


def link_artifact(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """Linking into a registry or portfolio: the version index is the artifact's own."""
    artifact = context.store.artifact(str(variables.get("artifactId")))
    return {"linkArtifact": {"versionIndex": 0 if artifact is None else artifact.version}}


def update_artifact(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    artifact = _artifact(context, variables.get("artifactID"))
    metadata = variables.get("metadata")
    if metadata is not None:
        with context.store.change():
            artifact.metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    return {"updateArtifact": {"artifact": {"id": artifact.id}}}


def digest_algorithm(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"project": {"artifactType": None}}


def client_id_mapping(context: Context, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"clientIDMapping": None}


def store_upload(context: Context, path: str, data: bytes) -> None:
    """A PUT to an upload URL: keep the bytes; a manifest also fills the artifact's entries,
    a file its size, a run file the run's `uploaded_files`."""
    store = context.store
    with store.change():
        store.put_blob(path, data)
        if path.startswith(MANIFEST_PREFIX):
            ident, _, rest = path.removeprefix(MANIFEST_PREFIX).partition("/")
            artifact = store.artifact(ident)
            if artifact is None:
                return
            if rest == "wandb_manifest.json":
                manifest = json.loads(data or b"{}")
                artifact.entries = dict(manifest.get("contents") or {})
            else:
                artifact.files[rest.removeprefix("files/")] = len(data)
            return
        parts = path.removeprefix("/storage/runs/").split("/", 3)
        if len(parts) == 4:
            run = store.run(*parts[:3])
            if run is not None:
                run.uploaded_files[parts[3]] = len(data)


HANDLERS: dict[str, Handler] = {
    "ArtifactType": artifact_type,
    "ArtifactByID": artifact_by_id,
    "ArtifactMembershipByName": membership_by_name,
    "CreateArtifact": create_artifact,
    "CreateArtifactManifest": create_manifest,
    "UpdateArtifactManifest": update_manifest,
    "CreateArtifactFiles": create_files,
    "CommitArtifact": commit,
    "UseArtifact": use_artifact,
    "LinkArtifact": link_artifact,
    "UpdateArtifact": update_artifact,
    "FetchArtifactDigestAlgorithm": digest_algorithm,
    "ClientIDMapping": client_id_mapping,
}
