"""What the bridge accepts from the outside and how much text it lets out: bounds of numbers,
sizes and ids. Pure: no I/O.

The rule: a value the state store or W&B cannot hold is refused here, at the edge, with a
reason, never at the database or inside wandb.

- Training steps are ints in ``[0, MAX_STEP)``: PostgreSQL's ``integer`` and W&B's step
  counters hold them.
- Timestamps (``created_at``, ``finished_at``, ...) are ints in ``[0, MAX_TIMESTAMP)``.
- Any other int in an API object beyond 64 bits becomes a float (an infinity when it is too
  large even for that): the JSON stays readable by every consumer.
- Strings from the API are cut to ``MAX_API_TEXT`` characters, JSON nested deeper than
  ``MAX_DEPTH`` is cut; what leaves the bridge (webhook ``data``, chat messages, the W&B
  summary) is cut shorter, and every cut says so: ``…[truncated 1999000 characters]``.
- Ids (jobs, events, checkpoints) are at most ``MAX_ID_LENGTH`` characters (the store's key
  columns); a job id must also be a W&B run id (:func:`run_id_problem`).
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_STEP = 2**31
MAX_TIMESTAMP = 2**53
MAX_INT64 = 2**63
MAX_ID_LENGTH = 128
MAX_API_TEXT = 65_536
MAX_DEPTH = 32
#: Metric names longer than this are left out of a history row, and rows keep at most
#: ``MAX_ROW_KEYS`` metrics.
MAX_METRIC_NAME = 256
MAX_ROW_KEYS = 1_000
#: Text leaving the bridge: each string in a webhook's ``data`` or the W&B summary, and a whole
#: chat message.
MAX_OUT_TEXT = 4_096
MAX_CHAT_TEXT = 3_500

TIMESTAMP_FIELDS = ("created_at", "finished_at", "estimated_finish")
# Letters, digits, dash, underscore, dot; a letter or digit first; no ".." (a path).
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut said at its end."""
    if len(text) <= limit:
        return text
    for keep in range(max(0, limit - 32), -1, -1):
        marker = f"…[truncated {len(text) - keep} characters]"
        if keep + len(marker) <= limit:
            return text[:keep] + marker
    return text[:limit]


def step(value: object) -> int | None:
    """A training step, or None when it is not an int (or an integral float) in range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        return None
    number = int(value)
    return number if 0 <= number < MAX_STEP else None


def timestamp(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < MAX_TIMESTAMP else None


def metric_value(value: object) -> float | None:
    """A metric as a float: ints and floats (NaN and infinities included: W&B keeps them;
    an int beyond float range is an infinity); anything else is not a metric."""
    if isinstance(value, float):
        return value
    if isinstance(value, int):  # bool is an int: True -> 1.0
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


def id_problem(value: object) -> str | None:
    """Why an item's id cannot be stored, or None."""
    if not isinstance(value, str) or not value:
        return "no string id"
    if len(value) > MAX_ID_LENGTH:
        return f"an id of {len(value)} characters (at most {MAX_ID_LENGTH})"
    return None


def run_id_problem(value: object) -> str | None:
    """Why a job id cannot be a W&B run id (and a path segment of the API), or None.

    wandb refuses ``:;,#?/'`` and surrounding whitespace; the API's own ids are
    ``ftjob-`` and letters and digits. Accepted: letters, digits, ``-``, ``_`` and ``.``, a
    letter or digit first, no ``..``, at most ``MAX_ID_LENGTH`` characters."""
    problem = id_problem(value)
    if problem is not None:
        return problem
    assert isinstance(value, str)
    if not _RUN_ID.fullmatch(value) or ".." in value:
        shown = truncate(value, 80)
        return (
            f"{shown!r} is not a W&B run id (letters, digits, '-', '_' and '.' only, "
            "a letter or digit first)"
        )
    return None


def clean_json(value: Any, depth: int = 0) -> Any:
    """An API value made safe to store and to hand to W&B: long strings cut, ints beyond 64
    bits as floats, nesting deeper than ``MAX_DEPTH`` cut (to None)."""
    if isinstance(value, str):
        return truncate(value, MAX_API_TEXT)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -MAX_INT64 <= value < MAX_INT64 else metric_value(value)
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {truncate(str(k), MAX_API_TEXT): clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(item, depth + 1) for item in value]
    return value


def clean_item(item: dict[str, Any]) -> dict[str, Any]:
    """An API object (job, event, checkpoint) as :func:`clean_json`, with its timestamps in
    range (a timestamp out of range is None)."""
    cleaned: dict[str, Any] = clean_json(item)
    for key in TIMESTAMP_FIELDS:
        if key in cleaned and cleaned[key] is not None and timestamp(cleaned[key]) is None:
            cleaned[key] = None
    return cleaned


def cap_text(value: Any, limit: int = MAX_OUT_TEXT) -> Any:
    """Every string in ``value`` (nested too) cut to ``limit`` characters."""
    if isinstance(value, str):
        return truncate(value, limit)
    if isinstance(value, dict):
        return {k: cap_text(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [cap_text(item, limit) for item in value]
    return value
