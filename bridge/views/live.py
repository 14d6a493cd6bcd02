"""``ftbridge status --watch``: the live terminal view of the board (rich ``Live``).

:func:`render` draws a :class:`bridge.views.board.Board` (a header and one row per job);
:func:`watch` refreshes it from the store every ``refresh`` seconds until ``until()`` is true
or Ctrl-C. Read from the store alone, the header has no poll cycle time or API error counts
(they live in the daemon's metrics): a caller in the daemon's own process (``ftbridge demo``)
passes ``pulse`` to show them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine

from bridge.views.board import Board, Header, JobView, Pulse, age, board, number
from bridge.views.reader import BoardReader

STATUS_STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "running": "cyan",
    "paused": "magenta",
    "queued": "blue",
    "validating_files": "blue",
}
_BAR_WIDTH = 16


def render(view: Board) -> RenderableType:
    """The header and the jobs table."""
    return Group(header_text(view.header), jobs_table(view.jobs))


def header_text(header: Header) -> Text:
    text = Text("ftbridge ", style="bold")
    text.append(f"{header.jobs} job(s), {header.active} active")
    states = ", ".join(f"{n} {s}" for s, n in sorted(header.by_status.items()))
    if states:
        text.append(f" ({states})", style="dim")
    text.append(f" · store written {age(header.last_write_age)} ago")
    text.append(f"\nW&B: {header.runs_open} run(s) open, {header.rows_waiting} row(s) waiting")
    pending = header.deliveries.get("pending", 0) + header.deliveries.get("held", 0)
    failed = header.deliveries.get("failed", 0) + header.deliveries.get("disabled", 0)
    text.append(f" · webhooks: {pending} pending, ")
    text.append(f"{failed} failed", style="red" if failed else "")
    for target in header.targets:
        text.append(f"\n  target {target.target}: ", style="red")
        text.append(_trouble(target.failed, target.retrying, target.disabled, target.last_status))
    text.append("\n" + pulse_line(header.pulse), style="dim")
    return text


def _trouble(failed: int, retrying: int, disabled: bool, status: int | None) -> str:
    parts = [f"{failed} failed"] if failed else []
    parts += [f"{retrying} retrying"] if retrying else []
    parts += ["disabled"] if disabled else []
    parts += [f"last answer HTTP {status}"] if status else []
    return ", ".join(parts)


def pulse_line(pulse: Pulse | None) -> str:
    if pulse is None:
        return "cycle time, API errors: in the daemon's /metrics (not in the store)"
    cycle = f"{pulse.mean_cycle_seconds:.2f} s" if pulse.mean_cycle_seconds is not None else "-"
    return (
        f"poll cycles: {pulse.cycles_ok} ok, {pulse.cycles_failed} failed, mean {cycle}"
        f" · API errors: {pulse.api_errors} · W&B errors: {pulse.wandb_errors}"
    )


def jobs_table(jobs: tuple[JobView, ...]) -> Table:
    table = Table(expand=False, pad_edge=False, show_edge=False)
    for name, justify in (
        ("source", "left"),
        ("job", "left"),
        ("model", "left"),
        ("status", "left"),
        ("progress", "left"),
        ("steps", "right"),
        ("train", "right"),
        ("valid", "right"),
        ("curve", "left"),
        ("lag", "right"),
        ("W&B run", "left"),
        ("hooks", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=name != "W&B run")  # type: ignore[arg-type]
    for job in jobs:
        table.add_row(*_cells(job))
    return table


def _cells(job: JobView) -> list[RenderableType]:
    bar: RenderableType = (
        ProgressBar(total=1.0, completed=job.progress, width=_BAR_WIDTH)
        if job.progress is not None
        else Text("·" * _BAR_WIDTH, style="dim")
    )
    metric = "" if job.metric == "loss" else f" {job.metric}"
    run = Text(job.run or "-", style=f"link {job.run_link}" if job.run_link else "")
    hooks = Text(f"{job.webhooks_pending}")
    if job.webhooks_failed:
        hooks.append(f" ({job.webhooks_failed} failed)", style="red")
    return [
        f"{job.provider}/{job.source}" if job.source != job.provider else job.provider,
        job.job_id,
        job.model,
        Text(job.status, style=STATUS_STYLES.get(job.status, "")),
        bar,
        job.steps_text,
        number(job.train) + metric,
        number(job.valid),
        Text(job.sparkline, style="cyan"),
        job.lag_text,
        run,
        hooks,
    ]


def watch(
    store: Engine | str,
    console: Console,
    *,
    until: Callable[[], bool] | None = None,
    refresh: float = 1.0,
    pulse: Callable[[], Pulse] | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> None:
    """Show the live view on ``console`` until ``until()`` is true, ``stop`` is set or
    KeyboardInterrupt (which is raised again, for the caller's exit code). ``store`` is an
    engine (shared with a daemon in this process) or a database URL (opened read-only here
    and closed after). The last frame stays on the screen."""
    engine, owned = _engine_of(store)
    reader = BoardReader(engine)
    stop = stop or threading.Event()
    try:

        def frame() -> RenderableType:
            try:
                snapshot = reader.snapshot()
            except sa.exc.SQLAlchemyError as error:  # a restart of the database, say
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()
                return Text(f"ftbridge: the state store cannot be read: {reason[0]}", "red")
            return render(board(snapshot, now=clock(), pulse=pulse() if pulse else None))

        with Live(frame(), console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set() and not (until is not None and until()):
                stop.wait(refresh)
                live.update(frame(), refresh=True)
    finally:
        if owned:
            engine.dispose()


def _engine_of(store: Engine | str) -> tuple[Engine, bool]:
    if isinstance(store, Engine):
        return store, False
    from bridge.status import open_store  # noqa: PLC0415 - the CLI's own check of the path

    return open_store(store).engine, True


def print_once(store: Engine, console: Console, *, now: float, pulse: Pulse | None = None) -> None:
    """One frame, printed (no cursor movement): what a pipe or a file gets."""
    console.print(render(board(BoardReader(store).snapshot(), now=now, pulse=pulse)))


def watch_status(database_url: str) -> int:
    """``ftbridge status --watch``: until Ctrl-C, whose KeyboardInterrupt the CLI turns
    into exit code 130 as for every command."""
    watch(database_url, Console())
    return 0


__all__ = [
    "STATUS_STYLES",
    "header_text",
    "jobs_table",
    "print_once",
    "render",
    "watch",
    "watch_status",
]
