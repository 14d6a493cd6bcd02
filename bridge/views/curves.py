"""The curves of one job (``ftbridge show``), pure: metric points in, series grouped into
charts, and charts drawn as braille dots on a grid of characters.

A chart holds one quantity and its splits: ``train_loss``, ``valid_loss`` and
``full_valid_loss`` (OpenAI), ``train/loss`` and ``eval/loss`` (Together) are all the chart
``loss``; RFT's ``train_reward_mean`` and ``valid_reward_mean`` are ``reward_mean``. Each braille
character holds 2 x 4 dots; where two series cross a cell, the one drawn last colours it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.views.board import Point

SPLITS = ("full_valid", "validation", "training", "train", "valid", "eval", "test")
_BRAILLE = 0x2800
# The bit of each dot of a braille cell, by (column, row) within the cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
#: Series drawn before others (train under valid); the rest by name.
_SPLIT_ORDER = {"train": 0, "training": 0, "": 1, "valid": 2, "validation": 2, "eval": 2}


@dataclass(frozen=True)
class Series:
    """One metric against the training step."""

    key: str
    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class ChartSpec:
    """The series of one chart, by its quantity's name."""

    name: str
    series: tuple[Series, ...]


def family(key: str) -> tuple[str, str]:
    """``(quantity, split)`` of a metric key: ``train_loss`` -> ``("loss", "train")``,
    ``eval/loss`` -> ``("loss", "eval")``, ``usage/prompt_tokens_mean`` -> itself, ``""``."""
    parts = key.split("/")
    split = ""
    for index, part in enumerate(parts):
        if part in SPLITS and len(parts) > 1:
            split = part
            del parts[index]
            break
    last = parts[-1]
    for word in SPLITS:
        if not split and last.startswith(word + "_") and len(last) > len(word) + 1:
            split = word
            parts[-1] = last[len(word) + 1 :]
            break
    return "/".join(parts), split


def series_of(points: Sequence[Point]) -> dict[str, Series]:
    """Every metric's points, by key, in step order; non-finite values left out."""
    found: dict[str, list[tuple[int, float]]] = {}
    for point in sorted(points, key=lambda p: p.step):
        for key, value in point.values.items():
            if math.isfinite(value):
                found.setdefault(key, []).append((point.step, value))
    return {
        key: Series(key, tuple(s for s, _ in pairs), tuple(v for _, v in pairs))
        for key, pairs in sorted(found.items())
    }


def charts(points: Sequence[Point], metric: str | None = None) -> list[ChartSpec]:
    """The charts of a job, loss first, then accuracy, reward, then the others by name;
    only the one(s) named by ``metric`` (a quantity or a key) when given."""
    by_family: dict[str, list[Series]] = {}
    for key, series in series_of(points).items():
        by_family.setdefault(family(key)[0], []).append(series)
    specs = [
        ChartSpec(name, tuple(sorted(group, key=_series_rank))) for name, group in by_family.items()
    ]
    if metric is not None:
        specs = [
            ChartSpec(s.name, tuple(x for x in s.series if metric in (s.name, x.key)))
            for s in specs
        ]
        specs = [s for s in specs if s.series]
    return sorted(specs, key=_chart_rank)


def metric_names(points: Sequence[Point]) -> list[str]:
    """What ``--metric`` takes: each chart's name and each key."""
    keys = sorted(series_of(points))
    return sorted({family(k)[0] for k in keys} | set(keys))


def _series_rank(series: Series) -> tuple[int, str]:
    split = family(series.key)[1]
    full = 3 if split == "full_valid" else _SPLIT_ORDER.get(split, 1)
    return full + (len(series.key.split("/")) - 1) * 10, series.key


def _chart_rank(spec: ChartSpec) -> tuple[int, str]:
    name = spec.name.rsplit("/", 1)[-1]
    for rank, word in enumerate(("loss", "accuracy", "reward")):
        if word in name:
            return rank * 10 + spec.name.count("/"), spec.name
    return 100 + spec.name.count("/"), spec.name


@dataclass(frozen=True)
class Grid:
    """A chart drawn: ``cells[row][column]`` is a character and the index of the series that
    coloured it (None for blank cells and for ``marks``, the checkpoints' columns)."""

    cells: tuple[tuple[tuple[str, int | None], ...], ...]
    low: float
    high: float
    first_step: int
    last_step: int
    marks: tuple[int, ...]


def draw(
    series: Sequence[Series], *, width: int, height: int, checkpoints: Sequence[int] = ()
) -> Grid:
    """``series`` as lines of braille dots on ``width`` x ``height`` characters, on shared axes
    (steps across, values up); checkpoints within the steps give the columns in ``marks``."""
    steps = [s for one in series for s in one.steps]
    values = [v for one in series for v in one.values]
    first, last = (min(steps), max(steps)) if steps else (0, 1)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    dots_x, dots_y = width * 2, height * 4
    bits = [[0] * width for _ in range(height)]
    owner: list[list[int | None]] = [[None] * width for _ in range(height)]

    def x_of(step: float) -> int:
        span = max(1, last - first)
        return min(dots_x - 1, round((step - first) / span * (dots_x - 1)))

    def y_of(value: float) -> int:
        return min(dots_y - 1, round((high - value) / (high - low) * (dots_y - 1)))

    for index, one in enumerate(series):
        points = [(x_of(s), y_of(v)) for s, v in zip(one.steps, one.values, strict=True)]
        for (x0, y0), (x1, y1) in zip(points, points[1:] or points, strict=False):
            for x, y in _line(x0, y0, x1, y1):
                bits[y // 4][x // 2] |= _DOTS[x % 2][y % 4]
                owner[y // 4][x // 2] = index
    cells = tuple(
        tuple(
            (chr(_BRAILLE + bits[r][c]) if bits[r][c] else " ", owner[r][c]) for c in range(width)
        )
        for r in range(height)
    )
    marks = tuple(sorted({x_of(step) // 2 for step in checkpoints if first <= step <= last}))
    return Grid(cells, low, high, first, last, marks)


def _line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """The dots from one point to the next (Bresenham)."""
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    error, out = dx + dy, []
    while True:
        out.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return out
        double = 2 * error
        if double >= dy:
            error += dy
            x0 += sx
        if double <= dx:
            error += dx
            y0 += sy


__all__ = [
    "ChartSpec",
    "Grid",
    "Series",
    "charts",
    "draw",
    "family",
    "metric_names",
    "series_of",
]
