"""Walking the API's pages, bounded: what keeps a hostile or broken API from holding the
bridge in one list forever.

Every walk over remote pages (jobs, events, checkpoints) goes through a :class:`PageWalk`,
which ends it:

- with :class:`bridge.errors.EndlessPaging` when the next cursor was already used in this walk,
  or when a page brings no id that the walk has not seen (the same page served again and
  again with ``has_more: true``);
- with :class:`bridge.errors.EndlessPaging` after ``max_pages`` pages (the page limit per job
  and cycle);
- with :class:`bridge.errors.Interrupted` as soon as the stop event is set (SIGTERM).

Items repeated inside a walk that still moves on are dropped, so nothing is handed on twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import EndlessPaging, Interrupted

#: Pages read per walk (per job and cycle): 1,000 pages of 100 items.
DEFAULT_MAX_PAGES = 1_000


@dataclass
class PageWalk:
    """The state of one walk: cursors used, ids seen, pages read."""

    what: str
    max_pages: int = DEFAULT_MAX_PAGES
    stopping: threading.Event | None = None
    pages: int = 0
    _cursors: set[str] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set)

    def before_page(self, cursor: str | None) -> None:
        """Called before each request: raises when the walk must end."""
        if self.stopping is not None and self.stopping.is_set():
            raise Interrupted(f"{self.what}: stopped")
        if self.pages >= self.max_pages:
            raise EndlessPaging(
                f"{self.what}: more than {self.max_pages} pages in one cycle; "
                "the rest is read on a later cycle"
            )
        if cursor is not None:
            if cursor in self._cursors:
                raise EndlessPaging(
                    f"{self.what}: the API gave the cursor {cursor[:80]!r} twice "
                    "(pages that never end)"
                )
            self._cursors.add(cursor)
        self.pages += 1

    def new_items(self, items: list[dict[str, Any]], has_more: bool) -> list[dict[str, Any]]:
        """The page's items not seen before in this walk; raises when a page that says more
        follows brings nothing new."""
        fresh = [item for item in items if str(item["id"]) not in self._ids]
        self._ids.update(str(item["id"]) for item in fresh)
        if has_more and items and not fresh:
            raise EndlessPaging(
                f"{self.what}: page {self.pages} repeats ids already seen and says more "
                "follow (pages that never end)"
            )
        return fresh
