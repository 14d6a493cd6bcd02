"""Read W&B `.wandb` transaction logs without wandb-core.

A `.wandb` file is a LevelDB log: a 7-byte header (`:W&B`, uint16 0xBEE1, uint8 version 0),
then 32 KiB blocks of chunks (uint32 crc, uint16 length, uint8 type, payload), where the crc is
plain CRC-32 (IEEE, unmasked) over the type byte and the payload, as wandb-core's
`core/pkg/leveldb` writes it with `CRCAlgoIEEE`. The header counts towards the first block.
Each record is one `wandb_internal_pb2.Record`, split over chunks when it crosses a block.

Reading stops quietly at the first torn, truncated or corrupt chunk: what comes before it is a
clean prefix of what wandb wrote. (LevelDB readers can skip to the next block instead; we do
not, so that "the steps on disk" is always a prefix of the steps logged.)
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

Record = Any
"""A `wandb_internal_pb2.Record`: wandb picks its protobuf module at import time, untyped."""
_RECORD: Any = wandb_internal_pb2.Record  # type: ignore[attr-defined]

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
_CHUNK = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4

INTERNAL_KEYS = frozenset({"_wandb", "_runtime", "_timestamp"})
"""Keys wandb adds to config, summary and history rows; left out of a RunLog."""

_RUN_DIR = re.compile(r"(?:offline-)?run-(?P<time>\d{8}_\d{6})-(?P<rest>.+)")


class WandbFileError(ValueError):
    """The file is not a W&B transaction log."""


class Alert(TypedDict):
    title: str
    text: str
    level: str


class ArtifactEntry(TypedDict):
    path: str
    digest: str
    size: int
    ref: str | None


class ArtifactLog(TypedDict):
    name: str
    type: str
    aliases: list[str]
    digest: str
    metadata: dict[str, Any]
    entries: list[ArtifactEntry]


class MetricDefinition(TypedDict):
    name: str
    step_metric: str | None


@dataclass(frozen=True)
class RunLog:
    """What one `.wandb` file (or several merged segments) says about a run."""

    run_id: str
    project: str
    entity: str
    display_name: str
    tags: tuple[str, ...]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int | None
    alerts: list[Alert]
    artifacts: list[ArtifactLog]
    metrics: list[MetricDefinition]

    @property
    def steps(self) -> list[int]:
        return [row["_step"] for row in self.history]

    @property
    def history_by_step(self) -> dict[int, dict[str, Any]]:
        return {row["_step"]: row for row in self.history}


# -- the LevelDB log layer ---------------------------------------------------------------------


def iter_records(path: str | Path) -> Iterator[Record]:
    """Yield every complete, CRC-valid record, stopping quietly at a torn or corrupt tail."""
    with Path(path).open("rb") as file:
        _check_header(path, file.read(len(FILE_HEADER)))
        for payload in _payloads(_chunks(file)):
            try:
                yield _RECORD.FromString(payload)
            except DecodeError:
                return


def _check_header(path: str | Path, header: bytes) -> None:
    if len(header) < len(FILE_HEADER) and FILE_HEADER.startswith(header):
        return  # empty or torn before the header was complete: no records
    if header[:6] != FILE_HEADER[:6]:
        raise WandbFileError(f"{path}: not a W&B transaction log (header {header!r})")
    if header != FILE_HEADER:
        raise WandbFileError(f"{path}: unsupported W&B transaction log version {header[6]}")


def _chunks(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (type, payload) of each valid chunk; the file is positioned after the header."""
    for kind, payload, _ in _positioned_chunks(file):
        yield kind, payload


def _from_a_record_start(chunks: Iterable[tuple[int, bytes, int]]) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the chunks from the first that starts a record (read from a block
    in the middle of the file, the first chunks may end a record that started before)."""
    started = False
    for kind, payload, _ in chunks:
        started = started or kind in (_FULL, _FIRST)
        if started:
            yield kind, payload


def _payloads(chunks: Iterable[tuple[int, bytes]]) -> Iterator[bytes]:
    """Join chunks into record payloads; an out-of-sequence chunk ends the log."""
    parts: list[bytes] | None = None
    for kind, payload in chunks:
        if kind == _FULL and parts is None:
            yield payload
        elif kind == _FIRST and parts is None:
            parts = [payload]
        elif kind in (_MIDDLE, _LAST) and parts is not None:
            parts.append(payload)
            if kind == _LAST:
                yield b"".join(parts)
                parts = None
        else:
            return


def whole_records_end(path: str | Path) -> tuple[int, bool]:
    """Where the file's last whole, decodable record ends (a byte offset), and whether a
    run record is among the records before it."""
    end, has_run = 0, False
    with Path(path).open("rb") as file:
        header = file.read(len(FILE_HEADER))
        _check_header(path, header)
        if len(header) < len(FILE_HEADER):
            return 0, False
        end = len(FILE_HEADER)
        parts: list[bytes] = []
        for kind, payload, chunk_end in _positioned_chunks(file):
            if kind == _FULL and not parts:
                record = payload
            elif kind == _FIRST and not parts:
                parts = [payload]
                continue
            elif kind in (_MIDDLE, _LAST) and parts:
                parts.append(payload)
                if kind == _MIDDLE:
                    continue
                record, parts = b"".join(parts), []
            else:
                break
            try:
                decoded = _RECORD.FromString(record)
            except DecodeError:
                break
            has_run = has_run or decoded.WhichOneof("record_type") == "run"
            end = chunk_end
    return end, has_run


def cut_to_whole_records(path: str | Path) -> tuple[int, bool]:
    """Cut a file that a kill left mid-record back to its last whole record, so that W&B's
    own reader (``wandb sync``), which stops at a torn tail with an error, reads it to the
    end. Returns the bytes cut and whether the file still holds a run record."""
    end, has_run = whole_records_end(path)
    size = Path(path).stat().st_size
    if size > end:
        with Path(path).open("r+b") as file:
            file.truncate(end)
    return size - end, has_run


def _positioned_chunks(file: IO[bytes], first_block: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """Like :func:`_chunks`, with the file offset where each chunk ends; from block
    ``first_block`` on (a chunk never spans two blocks, so every block starts with one)."""
    block_start = first_block * BLOCK_SIZE
    if first_block == 0:
        block, pos = FILE_HEADER + file.read(BLOCK_SIZE - len(FILE_HEADER)), len(FILE_HEADER)
    else:
        file.seek(block_start)
        block, pos = file.read(BLOCK_SIZE), 0
    while True:
        while pos + _CHUNK.size <= len(block):
            crc, length, kind = _CHUNK.unpack_from(block, pos)
            if crc == length == kind == 0:
                break  # zero padding: the rest of the block is unused
            payload = block[pos + _CHUNK.size : pos + _CHUNK.size + length]
            if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
                return  # torn or corrupt: stop at the last good chunk
            pos += _CHUNK.size + length
            yield kind, payload, block_start + pos
        if len(block) < BLOCK_SIZE:
            return
        block_start += BLOCK_SIZE
        block, pos = file.read(BLOCK_SIZE), 0


# -- records to a RunLog -----------------------------------------------------------------------


class _RunBuilder:
    def __init__(self, run_id: str) -> None:
        self.run: dict[str, Any] = dict(run_id=run_id, project="", entity="", display_name="")
        self.run["tags"] = ()
        self.config: dict[str, Any] = {}
        self.history: dict[int, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None
        self.alerts: list[Alert] = []
        self.artifacts: list[ArtifactLog] = []
        self.metrics: list[MetricDefinition] = []

    def add(self, record: Record) -> None:
        kind = record.WhichOneof("record_type")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(getattr(record, kind))

    def _on_run(self, run: Any) -> None:
        for name in ("run_id", "project", "entity", "display_name"):
            if getattr(run, name):
                self.run[name] = getattr(run, name)
        if run.tags:
            self.run["tags"] = tuple(run.tags)
        self._on_config(run.config)

    def _on_config(self, config: Any) -> None:
        _apply(self.config, config)

    def _on_summary(self, summary: Any) -> None:
        _apply(self.summary, summary)

    def _on_history(self, history: Any) -> None:
        row: dict[str, Any] = {}
        for item in history.item:
            _set_path(row, _item_path(item), _history_value(item))
        step = int(row.get("_step", history.step.num))
        self.history.setdefault(step, {}).update(row, _step=step)

    def _on_exit(self, exit_record: Any) -> None:
        self.exit_code = exit_record.exit_code

    def _on_alert(self, alert: Any) -> None:
        self.alerts.append(Alert(title=alert.title, text=alert.text, level=alert.level))

    def _on_artifact(self, artifact: Any) -> None:
        entries = [
            ArtifactEntry(path=e.path, digest=e.digest, size=e.size, ref=e.ref or None)
            for e in artifact.manifest.contents
        ]
        self.artifacts.append(
            ArtifactLog(
                name=artifact.name,
                type=artifact.type,
                aliases=list(artifact.aliases),
                digest=artifact.digest,
                metadata=json.loads(artifact.metadata) if artifact.metadata else {},
                entries=entries,
            )
        )

    def _on_metric(self, metric: Any) -> None:
        name = metric.name or metric.glob_name
        self.metrics.append(MetricDefinition(name=name, step_metric=metric.step_metric or None))

    def build(self) -> RunLog:
        return RunLog(
            **self.run,
            config=_public(self.config),
            history=[_public(row) for _, row in sorted(self.history.items())],
            summary=_public(self.summary),
            exit_code=self.exit_code,
            alerts=self.alerts,
            artifacts=self.artifacts,
            metrics=self.metrics,
        )


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _history_value(item: Any) -> Any:
    """Decode a history item written as JSON (the default) or in the typed form."""
    if item.value_json:
        return json.loads(item.value_json)  # NaN, Infinity, -Infinity decode to floats
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _apply(target: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord or SummaryRecord (update and remove items) to `target`."""
    for item in record.update:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in record.remove:
        *parents, last = _item_path(item)
        for key in parents:
            target = target.get(key, {})
        target.pop(last, None)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    *parents, last = path
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value


def _public(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in INTERNAL_KEYS}


def read_run(path: str | Path) -> RunLog:
    """Decode a `.wandb` file; a file with no run record still yields its id from its name."""
    run_id = Path(path).stem.removeprefix("run-")
    builder = _RunBuilder(run_id)
    for record in iter_records(path):
        builder.add(record)
    return builder.build()


def wait_for_exit_record(path: str | Path, timeout: float = 10.0) -> None:
    """Return once the file's last record is its exit record (decoding only that record)."""
    deadline = time.monotonic() + timeout
    while not _ends_with_exit(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout} s")
        time.sleep(0.005)


def wait_for_exit(path: str | Path, timeout: float = 10.0) -> RunLog:
    """Read a run once its exit record is on disk.

    With wandb 0.31, `run.finish()` returns a few milliseconds before wandb-core writes the
    file's buffered tail, so a file read right after `finish()` may lack its last records.
    """
    wait_for_exit_record(path, timeout)
    return read_run(path)


def _ends_with_exit(path: str | Path) -> bool:
    """Whether the file's last complete record is the exit record (only that one decoded).
    Only the last two blocks are read: the exit record is small, so it starts in one of
    them, and the chunks before the first record that starts there are skipped."""
    last = None
    with Path(path).open("rb") as file:
        _check_header(path, file.read(len(FILE_HEADER)))
        size = file.seek(0, os.SEEK_END)
        first_block = max(0, size // BLOCK_SIZE - 1)
        if first_block == 0:
            file.seek(len(FILE_HEADER))
        for payload in _payloads(_from_a_record_start(_positioned_chunks(file, first_block))):
            last = payload
    if last is None:
        return False
    try:
        return bool(_RECORD.FromString(last).WhichOneof("record_type") == "exit")
    except DecodeError:
        return False


def steps(path: str | Path) -> list[int]:
    """The history steps that reached the file, in order."""
    return read_run(path).steps


# -- several segments of one run ---------------------------------------------------------------


def run_folders(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every folder of `run_id` under `<wandb_dir>/wandb/` (of exactly this id, not of ids
    it is a prefix of), oldest first, whether or not its `.wandb` file exists yet.

    Each process (or re-init) of a run id makes its own folder,
    `[offline-]run-<YYYYmmdd_HHMMSS>-<id>[-<n>]`; `-<n>` separates folders started in the
    same second. The timestamp is local time, with one-second resolution.
    """
    root = Path(wandb_dir) / "wandb"
    return in_order(run_id, root.glob(f"*run-*-{run_id}*"))


def in_order(run_id: str, folders: Iterable[Path]) -> list[Path]:
    """Those of ``folders`` that are `run_id`'s (see :func:`run_folders`), oldest first."""
    found: list[tuple[str, int, Path]] = []
    for folder in folders:
        match = _RUN_DIR.fullmatch(folder.name)
        if match is None:
            continue
        rest = match["rest"]
        if rest == run_id:
            found.append((match["time"], 0, folder))
        elif rest.startswith(f"{run_id}-") and rest[len(run_id) + 1 :].isdigit():
            found.append((match["time"], int(rest[len(run_id) + 1 :]), folder))
    return [folder for *_, folder in sorted(found)]


def run_id_candidates(folder_name: str) -> tuple[str, ...]:
    """The run ids a folder may be of: `<id>`, and `<id>` less a `-<n>` suffix (an id may
    itself end in `-<digits>`); none for a name that is not a run folder's."""
    match = _RUN_DIR.fullmatch(folder_name)
    if match is None:
        return ()
    rest = match["rest"]
    head, dash, tail = rest.rpartition("-")
    return (rest, head) if dash and head and tail.isdigit() else (rest,)


def find_run_files(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every `.wandb` file of `run_id` under `<wandb_dir>/wandb/`, oldest first (see
    :func:`run_folders`)."""
    return run_files_in(run_id, run_folders(wandb_dir, run_id))


def run_files_in(run_id: str, folders: Iterable[Path]) -> list[Path]:
    """The `.wandb` files of `run_id` in ``folders`` (its own, in order), those that exist."""
    files = (folder / f"run-{run_id}.wandb" for folder in folders)
    return [path for path in files if path.is_file()]


def merge(segments: Sequence[RunLog]) -> RunLog:
    """Merge segments of one run, oldest first, the way appending them to one run would.

    Rows whose step is not above the last step kept are dropped (a resumed run continues at
    the last step + 1); config and summary are merged key by key; the exit code is the last
    segment's.
    """
    if not segments:
        raise ValueError("no segments to merge")
    history: list[dict[str, Any]] = []
    for segment in segments:
        last = history[-1]["_step"] if history else -1
        history += [row for row in segment.history if row["_step"] > last]
    last_seg = segments[-1]
    return RunLog(
        run_id=last_seg.run_id,
        project=_last_set([s.project for s in segments]),
        entity=_last_set([s.entity for s in segments]),
        display_name=_last_set([s.display_name for s in segments]),
        tags=next((s.tags for s in reversed(segments) if s.tags), ()),
        config={k: v for s in segments for k, v in s.config.items()},
        history=history,
        summary={k: v for s in segments for k, v in s.summary.items()},
        exit_code=last_seg.exit_code,
        alerts=[a for s in segments for a in s.alerts],
        artifacts=[a for s in segments for a in s.artifacts],
        metrics=[m for s in segments for m in s.metrics],
    )


def _last_set(values: list[str]) -> str:
    return next((value for value in reversed(values) if value), "")


def read_merged(wandb_dir: str | Path, run_id: str) -> RunLog:
    """All segments of `run_id` under `<wandb_dir>/wandb/`, merged oldest first."""
    files = find_run_files(wandb_dir, run_id)
    if not files:
        raise FileNotFoundError(f"no .wandb file for run {run_id} under {Path(wandb_dir)}/wandb")
    return merge([read_run(path) for path in files])
