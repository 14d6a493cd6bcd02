"""The paging styles of the providers' APIs, as small reusable pieces on a bounded walk.

Each takes a ``fetch`` function for one page and yields the pages' items; every walk goes
through a :class:`bridge.paging.PageWalk`, so a repeated cursor, a page that brings nothing new
while saying more follows, too many pages or the stop signal ends it (see ``bridge.paging``).

- :func:`after_cursor` (OpenAI): ``after`` = the last item's id, until ``has_more`` is false.
- :func:`page_token` (Fireworks, Google-style APIs): ``pageToken`` = the previous answer's
  ``nextPageToken``, until there is none.
- :func:`page_number` (APIs with ``page=1, 2, ...``): until a page is short or says no more.
- :func:`single_page` (Together's job list: no paging at all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from bridge.paging import PageWalk

Json = dict[str, Any]
Page = list[Json]


def after_cursor(
    walk: PageWalk, fetch: Callable[[str | None], tuple[Page, bool]]
) -> Iterator[Page]:
    """``fetch(after) -> (items, has_more)``."""
    after: str | None = None
    while True:
        walk.before_page(after)
        items, has_more = fetch(after)
        yield walk.new_items(items, has_more)
        if not has_more or not items:
            return
        after = str(items[-1]["id"])


def page_token(
    walk: PageWalk, fetch: Callable[[str | None], tuple[Page, str | None]]
) -> Iterator[Page]:
    """``fetch(token) -> (items, next_token)``; an empty or absent token ends the walk."""
    token: str | None = None
    while True:
        walk.before_page(token)
        items, next_token = fetch(token)
        more = bool(next_token)
        yield walk.new_items(items, more)
        if not more:
            return
        token = next_token


def page_number(
    walk: PageWalk, fetch: Callable[[int], tuple[Page, bool]], first: int = 1
) -> Iterator[Page]:
    """``fetch(number) -> (items, has_more)``."""
    number = first
    while True:
        walk.before_page(str(number))
        items, has_more = fetch(number)
        yield walk.new_items(items, has_more)
        if not has_more or not items:
            return
        number += 1


def single_page(walk: PageWalk, fetch: Callable[[], Page]) -> Iterator[Page]:
    """One request gives every item."""
    walk.before_page(None)
    yield walk.new_items(fetch(), False)
