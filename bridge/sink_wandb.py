"""Runs in W&B through the ``wandb`` SDK: one run per job, many open at once in one process."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import wandb
from wandb.sdk.wandb_alerts import AlertLevel

from bridge.errors import SinkUnavailable
from bridge.mapping import ArtifactSpec, MetricRow, RunSpec
from bridge.ports import Json
from bridge.wandbfile import WandbFileError, read_run, wait_for_exit_record

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


class WandbSink:
    """:class:`bridge.ports.RunSink` writing real W&B runs (offline or online)."""

    def __init__(self, options: WandbOptions) -> None:
        self._options = options
        self._runs: dict[str, Any] = {}
        self._last_step: dict[str, int] = {}
        options.directory.mkdir(parents=True, exist_ok=True)
        # The process-wide settings: wandb's own terminal messages stay out of our logs.
        wandb.setup(wandb.Settings(silent=True, show_info=False))

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
            **extra,
        )

    def open(self, spec: RunSpec) -> str:
        if spec.run_id in self._runs:
            return str(self._runs[spec.run_id].settings.sync_file)
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
            self._forget_failed_init()
            raise SinkUnavailable(f"W&B did not open run {spec.run_id}: {_reason(error)}") from None
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self._runs[spec.run_id] = run
        self._last_step[spec.run_id] = -1
        return str(run.settings.sync_file)

    def _forget_failed_init(self) -> None:
        """A failed ``wandb.init`` leaves its run id registered in wandb-core: every later
        init of that id in this process fails at once with "run ID ... is in use", so the
        run could never open again, even once W&B is back. ``wandb.teardown()`` releases it
        (it also stops wandb-core, so only when no other run is open here; otherwise the id
        stays blocked until the next start)."""
        if self._runs:
            return
        try:
            wandb.teardown()
            wandb.setup(wandb.Settings(silent=True, show_info=False))
        except Exception as error:  # noqa: BLE001 - best effort; the next open says what fails
            log.warning("wandb.teardown_failed", error=_reason(error))

    def is_open(self, run_id: str) -> bool:
        return run_id in self._runs

    def open_runs(self) -> list[str]:
        return list(self._runs)

    def _run(self, run_id: str) -> Any:
        try:
            return self._runs[run_id]
        except KeyError:
            raise SinkUnavailable(f"run {run_id} is not open") from None

    def log(self, run_id: str, rows: Sequence[MetricRow]) -> None:
        """Each row at W&B step = its training step. A row for a step lower than one already
        logged (a step the events missed, filled in from the result file) would be dropped by
        W&B: it goes after the last row instead, and since every row carries its training
        step as ``step``, the metric that charts use as x-axis, it plots where it belongs."""
        run = self._run(run_id)
        for row in rows:
            wandb_step = max(row.step, self._last_step[run_id] + 1)
            try:
                run.log({**row.values, STEP_KEY: row.step}, step=wandb_step, commit=True)
            except Exception as error:  # noqa: BLE001
                raise SinkUnavailable(
                    f"W&B did not take a row of {run_id}: {_reason(error)}"
                ) from None
            self._last_step[run_id] = wandb_step

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
            run.log_artifact(artifact, aliases=list(spec.aliases))
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(
                f"W&B did not take artifact {spec.name}: {_reason(error)}"
            ) from None

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
        try:
            run.summary.update(clean)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(
                f"W&B did not take the summary of {run_id}: {_reason(error)}"
            ) from None

    def finish(self, run_id: str, exit_code: int, *, preempted: bool = False) -> None:
        run = self._runs.pop(run_id, None)
        self._last_step.pop(run_id, None)
        if run is None:
            return
        segment = str(run.settings.sync_file)
        try:
            if preempted:
                run.mark_preempting()
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            raise SinkUnavailable(f"W&B did not finish run {run_id}: {_reason(error)}") from None
        if self._options.mode != "disabled":
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

    def durable_steps(self, segment: str) -> set[int]:
        path = Path(segment)
        if not path.exists():
            return set()
        try:
            history = read_run(path).history
        except (WandbFileError, OSError) as error:
            log.warning("wandb.segment_unreadable", segment=segment, error=str(error))
            return set()
        # Rows are matched by their training step (``step``), which is also their W&B step
        # except for rows filled in after later ones.
        return {int(row[STEP_KEY]) for row in history if isinstance(row.get(STEP_KEY), int | float)}


def _bad_float(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
