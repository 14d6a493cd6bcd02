"""What the server holds for one run, and how uploads change it; pure, no I/O.

The rule it keeps is the real server's: a file_stream file is a map `offset -> line` in which a
line sent again at the same offset overwrites the old one, and a file's line count is its highest
offset + 1. The summary is the last line of `wandb-summary.json`. Config is kept plain
(`{key: value}`); the SDK's `{key: {"value": value}}` wrapping and its `_wandb` entry are undone
on the way in and redone on the way out.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

HISTORY = "wandb-history.jsonl"
SUMMARY = "wandb-summary.json"
EVENTS = "wandb-events.jsonl"
OUTPUT = "output.log"
WANDB_KEY = "_wandb"
ENDED = ("finished", "failed", "crashed", "killed", "preempted")


@dataclass
class ArtifactRecord:
    """One artifact version as logged by a run."""

    id: str
    name: str  # the collection (sequence) name
    type: str
    version: int  # the `N` of `vN`
    digest: str
    aliases: list[str] = field(default_factory=list)
    state: str = "PENDING"  # PENDING until CommitArtifact, then COMMITTED
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> manifest entry
    files: dict[str, int] = field(default_factory=dict)  # uploaded file name -> size
    client_id: str | None = None
    sequence_client_id: str | None = None

    @property
    def references(self) -> dict[str, str]:
        """`path -> ref` for the entries that point elsewhere (reference artifacts)."""
        return {path: e["ref"] for path, e in self.entries.items() if e.get("ref")}


@dataclass
class AlertRecord:
    title: str
    text: str
    severity: str
    wait_duration: Any = None


@dataclass
class RunRecord:
    """Everything the server holds for one run (`entity/project/run_id`)."""

    entity: str
    project: str
    run_id: str
    storage_id: str
    display_name: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    wandb_config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[int, str]] = field(default_factory=dict)  # file_stream files
    state: str = "running"
    exit_code: int | None = None
    preempting: bool = False
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    used_artifacts: list[str] = field(default_factory=list)  # ids of artifacts used as inputs
    alerts: list[AlertRecord] = field(default_factory=list)
    uploaded_files: dict[str, int] = field(default_factory=dict)  # run file name -> size
    upserts: int = 0
    file_stream_requests: int = 0
    created_at: float = 0.0
    heartbeat_at: float = 0.0

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"

    def lines(self, name: str) -> list[str]:
        """The lines of a file_stream file in offset order (gaps are skipped)."""
        stored = self.files.get(name, {})
        return [stored[offset] for offset in sorted(stored)]

    def line_count(self, name: str) -> int:
        stored = self.files.get(name, {})
        return max(stored) + 1 if stored else 0

    @property
    def history_lines(self) -> list[str]:
        return self.lines(HISTORY)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The history rows, in line order."""
        return [_row(line) for line in self.history_lines]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [_row(line) for line in self.lines(EVENTS)]

    @property
    def logs(self) -> list[str]:
        return self.lines(OUTPUT)

    def steps(self, key: str = "_step") -> list[Any]:
        """The values of `key` in line order, for rows that have it."""
        return [row[key] for row in self.history if key in row]

    def duplicates(self, key: str = "_step") -> list[Any]:
        """Values of `key` that occur on more than one line (each named once)."""
        counts = Counter(json.dumps(v, sort_keys=True) for v in self.steps(key))
        return [json.loads(v) for v, n in counts.items() if n > 1]

    @property
    def last_step(self) -> int:
        """The `_step` of the last history line, or -1."""
        steps = self.steps()
        return int(steps[-1]) if steps else -1

    def artifact(self, name: str) -> ArtifactRecord | None:
        """The newest version this run logged of the artifact called `name`."""
        found = [a for a in self.artifacts if a.name == name]
        return found[-1] if found else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = {name: {str(k): v for k, v in f.items()} for name, f in self.files.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        data = dict(data)
        data["files"] = {
            name: {int(k): v for k, v in f.items()} for name, f in data.get("files", {}).items()
        }
        data["artifacts"] = [ArtifactRecord(**a) for a in data.get("artifacts", [])]
        data["alerts"] = [AlertRecord(**a) for a in data.get("alerts", [])]
        return cls(**data)


def _row(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {"_unparsed": line}
    return value if isinstance(value, dict) else {"_value": value}


def _json_value(value: Any) -> Any:
    """A GraphQL JSONString arrives as a string; accept an object too."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def unwrap_config(wrapped: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`{k: {"value": v}}` -> (`{k: v}` without `_wandb`, the `_wandb` value)."""
    plain: dict[str, Any] = {}
    for key, item in wrapped.items():
        plain[key] = item["value"] if isinstance(item, dict) and "value" in item else item
    internal = plain.pop(WANDB_KEY, None)
    return plain, internal if isinstance(internal, dict) else {}


def wrapped_config(run: RunRecord) -> dict[str, Any]:
    """The run's config as the SDK and the Public API expect it: `{k: {"value": v}}`."""
    config: dict[str, Any] = {k: {"value": v, "desc": None} for k, v in run.config.items()}
    if run.wandb_config:
        config[WANDB_KEY] = {"value": run.wandb_config, "desc": None}
    return config


def apply_upsert(run: RunRecord, variables: dict[str, Any], now: float) -> None:
    """An `UpsertBucket`: fields that were sent replace the stored ones."""
    run.upserts += 1
    run.heartbeat_at = now
    for var, attr in [
        ("displayName", "display_name"),
        ("notes", "notes"),
        ("groupName", "group"),
        ("jobType", "job_type"),
    ]:
        if variables.get(var) is not None:
            setattr(run, attr, variables[var])
    if variables.get("tags") is not None:
        run.tags = list(variables["tags"])
    config = _json_value(variables.get("config"))
    if isinstance(config, dict):
        run.config, internal = unwrap_config(config)
        if internal:
            run.wandb_config = internal
    summary = _json_value(variables.get("summaryMetrics"))
    if isinstance(summary, dict):
        run.summary.update(summary)
    if variables.get("state"):
        run.state = str(variables["state"])


def apply_file_stream(run: RunRecord, body: dict[str, Any], now: float) -> None:
    """A file_stream request: store lines by offset, then the summary and the final state."""
    run.file_stream_requests += 1
    run.heartbeat_at = now
    if not body.get("complete"):
        reopen(run)
    files = body.get("files") or {}
    for name, chunk in files.items():
        offset = int(chunk.get("offset", 0))
        stored = run.files.setdefault(name, {})
        for i, line in enumerate(chunk.get("content") or []):
            stored[offset + i] = line
    if SUMMARY in files:
        summary_lines = run.lines(SUMMARY)
        if summary_lines:
            summary = _row(summary_lines[-1])
            if "_unparsed" not in summary:
                run.summary = summary
    for name in body.get("uploaded") or []:
        run.uploaded_files.setdefault(str(name), 0)
    if body.get("preempting"):
        run.preempting = True
        run.state = "preempting"
    if body.get("complete"):
        run.exit_code = int(body.get("exitcode") or 0)
        run.state = "finished" if run.exit_code == 0 else "failed"


def reopen(run: RunRecord) -> None:
    """A run that streams again after it ended (a resume, a sync) is running again."""
    if run.state in ENDED:
        run.state = "running"
        run.exit_code = None


def mark_crashed(run: RunRecord, now: float, silence: float) -> None:
    """A running run not heard from for `silence` seconds has crashed (W&B's reading of a
    process that died without finishing); streaming again reopens it."""
    if run.state == "running" and now - run.heartbeat_at > silence:
        run.state = "crashed"


def history_keys(run: RunRecord) -> dict[str, Any]:
    """The `historyKeys` JSON the Public API reads: key types and `lastStep`."""
    keys: dict[str, Counter[str]] = {}
    for row in run.history:
        for key, value in row.items():
            keys.setdefault(key, Counter())[_type_name(value)] += 1
    return {
        "keys": {
            key: {"typeCounts": [{"type": t, "count": n} for t, n in counts.items()]}
            for key, counts in keys.items()
        },
        "lastStep": run.last_step,
    }


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return str(value.get("_type", "map"))
    return "unknown"
