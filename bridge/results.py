"""The job's result file (pure): a CSV of per-step metrics, sometimes base64-encoded."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
from collections.abc import Iterable

from bridge.mapping import MetricRow

# The result file's column names, and the metric names the events use for the same values.
COLUMN_NAMES = {"train_accuracy": "train_mean_token_accuracy"}


class ResultFileError(ValueError):
    """The result file is not the CSV it should be."""


def decode(content: bytes) -> str:
    """The CSV text: as is when it starts with its header, else decoded from base64. A text
    file that is neither (another header, say) is said to be so, not "not UTF-8"."""
    text = content.lstrip().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
    if not text.startswith(b"step,"):
        try:
            text = base64.b64decode(b"".join(text.split()), validate=True).lstrip()
        except (binascii.Error, ValueError):
            raise ResultFileError(_not_csv(text)) from None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ResultFileError("base64, but what it holds is not UTF-8 text") from None
    if not decoded.startswith("step,"):
        raise ResultFileError("no 'step' column first in the header")
    return decoded


def _not_csv(text: bytes) -> str:
    try:
        first = text.decode("utf-8").splitlines()[0] if text else ""
    except UnicodeDecodeError:
        return "neither a CSV (UTF-8 text) nor base64"
    return f"neither base64 nor a CSV starting with a 'step' column (header {first[:60]!r})"


def _value(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) or cell.strip().lower() == "nan" else None


def parse(content: bytes) -> list[MetricRow]:
    """One row per step, metrics named as the events name them; unreadable cells are left out."""
    # newline="" as the csv module wants: a stray "\r" in a field is then data, not an error.
    reader = csv.DictReader(io.StringIO(decode(content), newline=""))
    try:
        return _rows(reader)
    except csv.Error as error:  # a NUL byte, a field over csv's size limit, ...
        raise ResultFileError(f"not a readable CSV: {error}") from None


def _rows(reader: csv.DictReader[str]) -> list[MetricRow]:
    rows: list[MetricRow] = []
    for record in reader:
        step = _value(record.get("step"))
        # A step of "nan" is a float here: int() of it would raise.
        if step is None or not math.isfinite(step) or step < 0 or step != int(step):
            continue
        values = {
            COLUMN_NAMES.get(name, name): number
            for name, cell in record.items()
            if name and name != "step" and (number := _value(cell)) is not None
        }
        rows.append(MetricRow(int(step), values))
    return rows


def missed(rows: Iterable[MetricRow], seen_steps: set[int]) -> list[MetricRow]:
    """The result file's rows for steps the events did not give."""
    return [row for row in rows if row.step not in seen_steps and row.values]
