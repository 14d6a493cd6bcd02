"""Cursor paging, as the API pages: newest first, `after` an id, `limit` a count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.emulator.errors import bad_param

MAX_LIMIT = 100


def parse_limit(query: Mapping[str, str], default: int) -> int:
    """`limit` from the query string, or 400."""
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise bad_param(
            "limit",
            f"Invalid 'limit': expected an integer, but got '{raw}' instead.",
            code="invalid_type",
        ) from None
    if limit < 1:
        raise bad_param(
            "limit",
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, "
            f"but got {limit} instead.",
            code="integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise bad_param(
            "limit",
            f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, "
            f"but got {limit} instead.",
            code="integer_above_max_value",
        )
    return limit


def page(
    items: list[dict[str, Any]], after: str | None, limit: int, *, with_ids: bool = False
) -> dict[str, Any]:
    """One page of `items` (already newest first) following the item whose id is `after`."""
    start = 0
    if after is not None:
        positions = [i for i, item in enumerate(items) if item["id"] == after]
        if not positions:
            raise bad_param("after", f"Invalid 'after': no object with id '{after}'.")
        start = positions[0] + 1
    data = items[start : start + limit]
    body: dict[str, Any] = {"object": "list", "data": data}
    if with_ids:
        body["first_id"] = data[0]["id"] if data else None
        body["last_id"] = data[-1]["id"] if data else None
    body["has_more"] = start + limit < len(items)
    return body
