"""Runs in W&B through the ``wandb`` SDK: one run per job, many open at once in one process.

What counts as kept differs by mode. Offline, the segment's ``.wandb`` file is the run: after
a crash it is cut back to its last whole record (so that ``wandb sync`` reads it) and its steps
are what survived. Online, the local file says nothing of what the server has; a run reopened
with ``resume="allow"`` learns from the server where its history ends (``run.starting_step``),
and that is what survived.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
import wandb
from wandb.sdk.wandb_alerts import AlertLevel

from bridge.errors import SinkUnavailable
from bridge.folder_index import FolderIndex
from bridge.mapping import ArtifactSpec, RunSpec
from bridge.ports import Json, OpenedRun, PlacedRow
from bridge.wandb_history import log_rows
from bridge.wandbfile import (
    WandbFileError,
    cut_to_whole_records,
    read_run,
    run_files_in,
    run_folders,
    wait_for_exit_record,
)

log = structlog.get_logger(__name__)

STEP_KEY = "step"


@dataclass(frozen=True)
class WandbOptions:
    mode: Literal["online", "offline", "disabled"]
    directory: Path
    api_key: str | None = None
    base_url: str | None = None
    init_timeout: float = 60.0
    finish_timeout: float = 10.0
    flush_interval: float = 1.0
    # Seconds between wandb-core's history uploads online (whole seconds: wandb-core
    # truncates; its default is 15).
    upload_interval: int = 2
    # wandb-core's Go garbage collector target (GOGC, Go's default 100): lower keeps the
    # heap of many open runs smaller for more GC work in wandb-core, in proportion to its
    # heap (1,000 open runs: about 280 MB at 100, 180-195 MB at 25, and the live benchmark's
    # peak 27 MB lower at 10, its lag unchanged). None leaves the environment's.
    core_gogc: int | None = 10
    # A soft limit on wandb-core's memory (GOMEMLIMIT, MiB): its GC works harder near it, up
    # to about half its CPU once the heap outgrows it. None: no limit.
    core_memory_limit_mib: int | None = None


def quiet_settings(**settings: Any) -> Any:
    """``wandb.Settings`` for a service: no console capture, system stats, git or code
    snapshots, and no terminal messages; ``settings`` adds to them."""
    return wandb.Settings(
        console="off",
        silent=True,
        save_code=False,
        disable_git=True,
        x_disable_stats=True,
        x_disable_machine_info=True,
        x_disable_meta=True,
        x_save_requirements=False,
        **settings,
    )


def preload() -> None:
    """Import now what the first ``wandb.init`` of a process imports (wandb's launch
    package, about 0.2 s, for launch inputs the bridge never has). Imported on the first
    init, it ran on the writing thread while the reading threads held the interpreter lock,
    and the first run of a backfill took about 0.9 s to open instead of 0.3 s. A backfill
    calls it before forking its writers (``bridge.writers``), which then have it too."""
    with contextlib.suppress(ImportError):
        importlib.import_module("wandb.sdk.launch.inputs.internal")


def shut_down() -> None:
    """Stop this process's wandb-core (every run finished): what ``atexit`` would do, for a
    command that exits without the interpreter's finalization (``bridge.entry.leave``)."""
    try:
        wandb.teardown()
    except Exception as error:  # noqa: BLE001 - best effort: wandb-core also exits with us
        log.warning("wandb.teardown_failed", error=_reason(error))


class WandbSink:
    """:class:`bridge.ports.RunSink` writing real W&B runs (offline or online)."""

    def __init__(self, options: WandbOptions) -> None:
        self._options = options
        self._runs: dict[str, Any] = {}
        # The summary last given to each open run: an unchanged one is not sent again.
        self._summaries: dict[str, Json] = {}
        self._blocked: set[str] = set()
        self._failed_at: float | None = None
        options.directory.mkdir(parents=True, exist_ok=True)
        self._folders = FolderIndex(options.directory)
        if options.core_gogc is not None:
            # Read by wandb-core when it starts (it inherits this process's environment).
            os.environ.setdefault("GOGC", str(options.core_gogc))
        if options.core_memory_limit_mib is not None:
            os.environ.setdefault("GOMEMLIMIT", f"{options.core_memory_limit_mib}MiB")
        # The process-wide settings: wandb's own terminal messages stay out of our logs.
        wandb.setup(wandb.Settings(silent=True, show_info=False))
        preload()

    def _settings(self) -> Any:
        opts = self._options
        extra: dict[str, Any] = {}
        if opts.api_key:
            extra["api_key"] = opts.api_key
        if opts.base_url:
            extra["base_url"] = opts.base_url
        return quiet_settings(
            mode=opts.mode,
            init_timeout=opts.init_timeout,
            finish_timeout=opts.finish_timeout,
            finish_timeout_raises=True,
            # wandb-core writes the .wandb file every 15 s by default: a kill -9 loses up to
            # that much, which the bridge then sends again. Flushing often keeps that small.
            x_transaction_log_flush_interval=opts.flush_interval,
            x_file_stream_transmit_interval=max(1, int(opts.upload_interval)),
            **extra,
        )

    @property
    def online(self) -> bool:
        return self._options.mode == "online"

    def open(self, spec: RunSpec) -> OpenedRun:
        if spec.run_id in self._runs:
            return self._opened(self._runs[spec.run_id])
        if self._failed_at is not None and not self.reachable():
            raise SinkUnavailable(f"W&B did not open run {spec.run_id}: W&B is unreachable")
        if self._options.mode == "offline":
            self._tidy_segments(spec.run_id)
        before = set(self._folders.folders(spec.run_id))
        started = time.time()
        try:
            run = wandb.init(
                id=spec.run_id,
                project=spec.project,
                entity=spec.entity,
                name=spec.name,
                tags=list(spec.tags),
                config=spec.config,
                dir=str(self._options.directory),
                resume="allow",
                reinit="create_new",
                settings=self._settings(),
            )
        except Exception as error:  # noqa: BLE001 - wandb raises many kinds; all mean "not now"
            self._failed_at = time.monotonic()
            self._forget_failed_init(spec.run_id, before, started)
            raise SinkUnavailable(f"W&B did not open run {spec.run_id}: {_reason(error)}") from None
        self._failed_at = None
        self._folders.add(Path(str(run.settings.sync_file)).parent)
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self._runs[spec.run_id] = run
        return self._opened(run)

    def _opened(self, run: Any) -> OpenedRun:
        resumed_at = int(run.starting_step) if self.online else None
        return OpenedRun(str(run.settings.sync_file), resumed_at)

    def reachable(self) -> bool:
        """Whether W&B answers at all (any HTTP answer counts); always true offline."""
        if not self.online:
            return True
        url = (self._options.base_url or "https://api.wandb.ai").rstrip("/") + "/healthz"
        try:
            httpx.get(url, timeout=3.0)
        except httpx.HTTPError:
            return False
        return True

    def new_pass(self) -> None:
        self._folders.stale()

    def _forget_failed_init(self, run_id: str, before: set[Path], started: float) -> None:
        """A failed ``wandb.init`` leaves a folder behind, and its run id registered in
        wandb-core: every later init of that id in this process fails at once with "run ID
        ... is in use", even once W&B is back. The folder goes (this run id's only: another
        process, a writer of the same backfill, may be creating the folder of an id this one
        is a prefix of; and only one made since the init began, however old the listing
        ``before`` came from); the id is released by ``wandb.teardown()``, which also stops
        wandb-core, so it waits until no run is open here (see :meth:`blocked`)."""
        for folder in set(run_folders(self._options.directory, run_id)) - before:
            if _made_since(folder, started):
                shutil.rmtree(folder, ignore_errors=True)
        self._blocked.add(run_id)
        if not self._runs:
            self.reset()

    def blocked(self) -> set[str]:
        """Run ids a failed init left registered in wandb-core while other runs were open:
        they open again only after :meth:`reset` (with no run open)."""
        return set(self._blocked)

    def reset(self) -> None:
        """Restart wandb-core (no run may be open), releasing every blocked run id."""
        if self._runs:
            raise RuntimeError("reset with runs open")
        try:
            wandb.teardown()
            wandb.setup(wandb.Settings(silent=True, show_info=False))
        except Exception as error:  # noqa: BLE001 - best effort; the next open says what fails
            log.warning("wandb.teardown_failed", error=_reason(error))
            return
        self._blocked.clear()

    def is_open(self, run_id: str) -> bool:
        return run_id in self._runs

    def open_runs(self) -> list[str]:
        return list(self._runs)

    def _run(self, run_id: str) -> Any:
        try:
            return self._runs[run_id]
        except KeyError:
            raise SinkUnavailable(f"run {run_id} is not open") from None

    def log(self, run_id: str, rows: Sequence[PlacedRow]) -> None:
        """Each row at its W&B step; every row carries its training step as ``step``, the
        metric that charts use as x-axis, so a row filled in after later ones (at a later W&B
        step) plots where it belongs."""
        run = self._run(run_id)
        try:
            log_rows(run, [(p.at, {**p.row.values, STEP_KEY: p.row.step}) for p in rows])
        except Exception as error:  # noqa: BLE001
            self._give_up(run_id)
            raise SinkUnavailable(f"W&B did not take a row of {run_id}: {_reason(error)}") from None

    def _give_up(self, run_id: str) -> None:
        """Forget a segment that failed mid-way: it is repaired like a crash."""
        self._summaries.pop(run_id, None)
        run = self._runs.pop(run_id, None)
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception as error:  # noqa: BLE001 - it is given up either way
                log.warning("wandb.finish_failed", job_id=run_id, error=_reason(error))

    def log_artifact(self, run_id: str, spec: ArtifactSpec) -> None:
        run = self._run(run_id)
        try:
            artifact = wandb.Artifact(spec.name, type=spec.type, metadata=spec.metadata)
            if spec.reference:
                artifact.add_reference(spec.reference, name=spec.type, checksum=False)
            for name, content in spec.files.items():
                with artifact.new_file(name, mode="wb") as handle:
                    handle.write(content)
            for name, (columns, rows) in spec.tables.items():
                artifact.add(wandb.Table(columns=list(columns), data=rows), name)
            logged = run.log_artifact(artifact, aliases=list(spec.aliases))
            if spec.shared and self.online:
                # This run's input too, like the later runs' that use it; waited for, so
                # that the next run can use it at once.
                logged.wait(timeout=max(1, math.ceil(self._options.finish_timeout)))
                run.use_artifact(logged)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(
                f"W&B did not take artifact {spec.name}: {_reason(error)}"
            ) from None

    def use_artifact(self, run_id: str, path: str, kind: str) -> None:
        run = self._run(run_id)
        if not self.online:
            return  # wandb refuses offline; the run's config, summary and tags say it
        try:
            run.use_artifact(path, type=kind)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(f"W&B did not give artifact {path}: {_reason(error)}") from None

    def update_config(self, run_id: str, config: Json) -> None:
        run = self._run(run_id)
        try:
            run.config.update(config, allow_val_change=True)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(
                f"W&B did not take the config of {run_id}: {_reason(error)}"
            ) from None

    def update_summary(self, run_id: str, summary: Json) -> None:
        run = self._run(run_id)
        clean = {k: v for k, v in summary.items() if v is not None and not _bad_float(v)}
        if self._summaries.get(run_id) == clean:
            return  # this segment has it already
        try:
            run.summary.update(clean)
        except Exception as error:  # noqa: BLE001
            self._summaries.pop(run_id, None)
            raise SinkUnavailable(
                f"W&B did not take the summary of {run_id}: {_reason(error)}"
            ) from None
        self._summaries[run_id] = clean

    def finish(self, run_id: str, exit_code: int, *, preempted: bool = False) -> None:
        self._summaries.pop(run_id, None)
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        segment = str(run.settings.sync_file)
        try:
            if preempted:
                run.mark_preempting()
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(f"W&B did not finish run {run_id}: {_reason(error)}") from None
        if self._options.mode == "offline":
            self._confirm_on_disk(run_id, segment)

    def _confirm_on_disk(self, run_id: str, segment: str) -> None:
        """``finish()`` returns a moment before wandb-core writes the file's tail: wait for
        the exit record, so that "finished" really means "on disk"."""
        try:
            wait_for_exit_record(segment, timeout=self._options.finish_timeout)
        except (TimeoutError, WandbFileError, OSError) as error:
            raise SinkUnavailable(f"run {run_id} is not confirmed on disk: {error}") from None

    def alert(self, run_id: str, title: str, text: str) -> None:
        run = self._run(run_id)
        try:
            run.alert(title=title, text=text, level=AlertLevel.ERROR)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(
                f"W&B did not take the alert of {run_id}: {_reason(error)}"
            ) from None

    def durable_steps(self, segment: str) -> set[int] | None:
        if self.online:
            return None
        path = Path(segment)
        if not self._make_whole(path):
            return set()
        try:
            return set(read_run(path).steps)
        except (WandbFileError, OSError) as error:
            log.warning("wandb.segment_unreadable", segment=segment, error=str(error))
            return set()

    def _tidy_segments(self, run_id: str) -> None:
        """Before a run opens again offline: every earlier segment of it must be a file that
        ``wandb sync`` reads to the end, including one a kill left before the store knew it."""
        for path in run_files_in(run_id, self._folders.folders(run_id)):
            if path.parent.name.startswith("offline-run-"):
                self._make_whole(path)

    def _make_whole(self, path: Path) -> bool:
        """Cut a segment's file back to its last whole record; remove a segment that holds
        no run record (nothing of it reached the file: it would only make ``wandb sync``
        fail, and its rows are sent again). Returns whether the segment is still there."""
        if not path.exists():
            return False
        try:
            cut, has_run = cut_to_whole_records(path)
        except (WandbFileError, OSError) as error:
            log.warning("wandb.segment_unreadable", segment=str(path), error=str(error))
            return False
        if not has_run:
            shutil.rmtree(path.parent, ignore_errors=True)
            log.info("wandb.empty_segment_removed", segment=str(path))
            return False
        if cut:
            log.info("wandb.segment_cut", segment=str(path), bytes_cut=cut)
        return True


def _made_since(folder: Path, started: float) -> bool:
    """Whether the folder was changed (made) at or after ``started``, give or take a second
    of the file system's time stamps."""
    try:
        return folder.stat().st_mtime >= started - 1.0
    except OSError:
        return False


def _bad_float(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
