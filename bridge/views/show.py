"""``ftbridge show JOB``: the curves of one job, from the state store (so offline, before any
``wandb sync``), as braille charts in the terminal and, with ``--png``, as an image.

The charts come from :mod:`bridge.views.curves`; checkpoints (their messages and the
checkpoint artifacts logged) are marked under the steps they were made at; the run's config
and summary stand beside. The image needs matplotlib (``pip install 'ftbridge[plots]'``),
imported only for ``--png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine

from bridge import mapping
from bridge.errors import BridgeError, ConfigError
from bridge.views.board import number
from bridge.views.curves import ChartSpec, charts, draw, metric_names
from bridge.views.live import STATUS_STYLES
from bridge.views.reader import JobCurves, job_curves

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")
#: The same colours for the image (matplotlib's names).
PNG_COLOURS = ("tab:cyan", "tab:purple", "tab:green", "tab:olive", "tab:blue", "tab:red")
CHART_HEIGHT = 10
_SIDE_WIDTH = 44
_WIDE = 120


class MissingExtra(ConfigError):
    """--png needs matplotlib: pip install 'ftbridge[plots]'."""


def chart_panel(spec: ChartSpec, *, width: int, checkpoints: Sequence[int]) -> Panel:
    """One chart: y labels at the left, steps under it, checkpoints marked ``▲``, a legend."""
    label_width = 9
    grid = draw(
        spec.series,
        width=max(10, width - label_width - 5),
        height=CHART_HEIGHT,
        checkpoints=checkpoints,
    )
    lines: list[Text] = []
    for index, row in enumerate(grid.cells):
        label = _y_label(index, grid.low, grid.high, len(grid.cells))
        line = Text(f"{label:>{label_width - 1}} ┤", style="dim")
        for char, owner in row:
            line.append(char, style=COLOURS[owner % len(COLOURS)] if owner is not None else "")
        lines.append(line)
    columns = len(grid.cells[0])
    axis = [" "] * columns
    for column in grid.marks:
        axis[column] = "▲"
    lines.append(Text(" " * label_width + "".join(axis), style="yellow"))
    first, last = str(grid.first_step), str(grid.last_step)
    gap = max(1, columns - len(first) - len(last))
    lines.append(Text(f"{'step':>{label_width - 1}}  {first}{' ' * gap}{last}", style="dim"))
    legend = Text()
    for index, series in enumerate(spec.series):
        legend.append("━━ ", style=COLOURS[index % len(COLOURS)])
        legend.append(f"{series.key} ({number(series.values[-1])})  ")
    if grid.marks:
        legend.append("▲ checkpoint", style="yellow")
    lines.append(legend)
    return Panel(Group(*lines), title=spec.name, title_align="left", width=width)


def _y_label(row: int, low: float, high: float, rows: int) -> str:
    if row == 0:
        return number(high)
    if row == rows - 1:
        return number(low)
    if row == rows // 2:
        return number((high + low) / 2)
    return ""


def side_table(curves: JobCurves) -> Table:
    """The job, its config (hyperparameters flattened) and its summary."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True, max_width=26, overflow="ellipsis")
    table.add_column(overflow="fold")
    table.add_row("job", curves.job_id)
    table.add_row("status", Text(curves.status, style=STATUS_STYLES.get(curves.status, "")))
    config = dict(curves.config) or mapping.run_config(curves.job)
    table.add_row(Text("config", style="underline"), "")
    for key, value in _flat(config):
        table.add_row(key, str(value))
    table.add_row(Text("summary", style="underline"), "")
    for key, value in mapping.run_summary(curves.job).items():
        table.add_row(key, str(value))
    if curves.total_steps:
        table.add_row("total_steps", str(curves.total_steps))
    if curves.checkpoints:
        table.add_row("checkpoints", ", ".join(f"step {s}" for s in curves.checkpoints))
    return table


# The method's own hyperparameters are in ``hyperparameters`` already (``run_config``).
_LEFT_OUT = frozenset({"integrations", "raw", "job_id", "object", "method"})


def _flat(config: Mapping[str, Any], indent: str = "") -> list[tuple[str, object]]:
    """Scalars as they are; a nested object as its name, then its keys indented under it."""
    out: list[tuple[str, object]] = []
    for key, value in config.items():
        if key in _LEFT_OUT or value is None:
            continue
        if isinstance(value, Mapping):
            out += [(f"{indent}{key}", ""), *_flat(value, indent + "  ")]
        elif not isinstance(value, list):
            out.append((f"{indent}{key}", value))
    return out


def render(curves: JobCurves, *, width: int, metric: str | None = None) -> RenderableType:
    """The charts and the side table: side by side on a wide console, else one under the
    other."""
    specs = charts(curves.points, metric)
    if not specs:
        what = f"no metric {metric!r}" if metric else "no metrics yet"
        body: RenderableType = Text(f"{curves.job_id}: {what}", style="yellow")
    else:
        wide = width >= _WIDE
        chart_width = width - _SIDE_WIDTH - 1 if wide else width
        body = Group(
            *(chart_panel(s, width=chart_width, checkpoints=curves.checkpoints) for s in specs)
        )
        if wide:
            layout = Table.grid(padding=(0, 2))
            layout.add_column(width=chart_width)
            layout.add_column(width=_SIDE_WIDTH - 2)
            layout.add_row(body, side_table(curves))
            return layout
    return Group(body, side_table(curves))


def write_png(curves: JobCurves, path: Path, *, metric: str | None = None) -> None:
    """The same charts as an image (one panel per chart, checkpoints as dotted lines)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise MissingExtra() from None
    specs = charts(curves.points, metric)
    if not specs:
        raise BridgeError(f"{curves.job_id} has no metrics to draw")
    columns = 1 if len(specs) == 1 else 2
    rows = (len(specs) + columns - 1) // columns
    figure = Figure(figsize=(6.4 * columns, 3.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, spec in enumerate(specs):
        ax = axes[index // columns][index % columns]
        for n, series in enumerate(spec.series):
            colour = PNG_COLOURS[n % len(PNG_COLOURS)]
            ax.plot(series.steps, series.values, label=series.key, color=colour, linewidth=1.4)
        for step in curves.checkpoints:
            ax.axvline(step, color="tab:orange", linestyle=":", linewidth=1)
        ax.set_title(spec.name, loc="left")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for index in range(len(specs), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.suptitle(f"{curves.job_id} ({curves.status})")
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise BridgeError(f"cannot write {path}: {error.strerror or error}") from None


def run_show(
    engine: Engine,
    job_id: str,
    console: Console,
    *,
    metric: str | None = None,
    png: Path | None = None,
) -> int:
    """``ftbridge show``: 0, or 1 with one line when the job or the metric is not known."""
    curves = job_curves(engine, job_id)
    if curves is None:
        raise BridgeError(f"no job {job_id!r} in the state store (see: ftbridge status)")
    if metric is not None and not charts(curves.points, metric):
        known = ", ".join(metric_names(curves.points)) or "none yet"
        raise BridgeError(f"{job_id} has no metric {metric!r}; it has: {known}")
    console.print(render(curves, width=console.width, metric=metric))
    if png is not None:
        write_png(curves, png, metric=metric)
        console.print(f"wrote {png}")
    return 0


__all__ = ["MissingExtra", "chart_panel", "render", "run_show", "side_table", "write_png"]
