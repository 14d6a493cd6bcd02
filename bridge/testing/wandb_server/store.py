"""The server's state: runs by `entity/project/run_id`, artifacts by id, uploaded blobs.

One lock guards it all; every change goes through `Store.change()`, which saves the whole state
as JSON into `data_dir` (written to a temporary file, then renamed) before the request is
answered, so a restarted server, in this process or another, sees everything it acknowledged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bridge.testing.wandb_server.runs import ArtifactRecord, RunRecord, mark_crashed

STATE_FILE = "wandb-server-state.json"


def storage_id(kind: str, number: int) -> str:
    """An opaque id in the style of W&B's (base64 of `Kind:number`)."""
    return base64.b64encode(f"{kind}:{number}".encode()).decode()


class Store:
    """All runs and artifacts; safe to use from many request threads."""

    def __init__(self, data_dir: Path | None = None, crash_after: float | None = None) -> None:
        self.data_dir = data_dir
        self.crash_after = crash_after
        self.lock = threading.RLock()
        self.runs: dict[tuple[str, str, str], RunRecord] = {}
        self.artifacts: dict[str, tuple[tuple[str, str, str], ArtifactRecord]] = {}
        self.blobs: dict[str, bytes] = {}
        self.counter = 0
        if data_dir is not None:
            self._load(data_dir)

    def next_id(self, kind: str) -> str:
        with self.lock:
            self.counter += 1
            return storage_id(kind, self.counter)

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        """Hold the lock while the state changes, then persist it."""
        with self.lock:
            yield
            self.save()

    def mark_silent_runs(self) -> None:
        """With `crash_after`, running runs silent for that long become `crashed`."""
        if self.crash_after is None:
            return
        now = time.time()
        with self.lock:
            for run in self.runs.values():
                mark_crashed(run, now, self.crash_after)

    def run(self, entity: str, project: str, run_id: str) -> RunRecord | None:
        with self.lock:
            return self.runs.get((entity, project, run_id))

    def run_by_storage_id(self, ident: str) -> RunRecord | None:
        with self.lock:
            return next((r for r in self.runs.values() if r.storage_id == ident), None)

    def ensure_run(self, entity: str, project: str, run_id: str) -> tuple[RunRecord, bool]:
        """The run, created if missing; the flag says whether it was created."""
        with self.lock:
            key = (entity, project, run_id)
            if key in self.runs:
                return self.runs[key], False
            now = time.time()
            run = RunRecord(
                entity=entity,
                project=project,
                run_id=run_id,
                storage_id=self.next_id("Run"),
                created_at=now,
                heartbeat_at=now,
            )
            self.runs[key] = run
            return run, True

    def add_artifact(self, run: RunRecord, artifact: ArtifactRecord) -> None:
        with self.lock:
            run.artifacts.append(artifact)
            self.artifacts[artifact.id] = ((run.entity, run.project, run.run_id), artifact)

    def artifact(self, ident: str) -> ArtifactRecord | None:
        with self.lock:
            found = self.artifacts.get(ident)
            return found[1] if found else None

    def collection(self, entity: str, project: str, name: str) -> list[ArtifactRecord]:
        """The versions of artifact `name` in a project, oldest first."""
        with self.lock:
            return sorted(
                (
                    a
                    for (e, p, _), a in self.artifacts.values()
                    if (e, p) == (entity, project) and a.name == name
                ),
                key=lambda a: a.version,
            )

    def put_blob(self, path: str, data: bytes) -> None:
        with self.lock:
            self.blobs[path] = data
            if self.data_dir is not None:
                target = self.data_dir / "storage" / path.strip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def save(self) -> None:
        if self.data_dir is None:
            return
        with self.lock:
            state = {
                "counter": self.counter,
                "runs": [run.to_json() for run in self.runs.values()],
            }
            self.data_dir.mkdir(parents=True, exist_ok=True)
            target = self.data_dir / STATE_FILE
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps(state))
            temporary.replace(target)

    def _load(self, data_dir: Path) -> None:
        source = data_dir / STATE_FILE
        if not source.exists():
            return
        state: dict[str, Any] = json.loads(source.read_text())
        self.counter = int(state.get("counter", 0))
        for data in state.get("runs", []):
            run = RunRecord.from_json(data)
            self.runs[(run.entity, run.project, run.run_id)] = run
            for artifact in run.artifacts:
                self.artifacts[artifact.id] = ((run.entity, run.project, run.run_id), artifact)
        storage = data_dir / "storage"
        if storage.is_dir():
            for path in storage.rglob("*"):
                if path.is_file():
                    self.blobs["/" + path.relative_to(storage).as_posix()] = path.read_bytes()
