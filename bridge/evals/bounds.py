"""The bounds of a job's samples, and where they are set: the global settings
(``FTBRIDGE_EVAL_*``), a ``[[sources]]`` table, a ``[[routes]]`` table. The most specific wins,
key by key: the job's first matching route, then its source, then the global value. Pure.

The limits of each key live here once (``Samples``, ``MaxTokens``, ``TokenBudget``,
``Deadline``) and serve the settings and both kinds of table, so that a bad value is refused
with the same words wherever it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import BaseModel, Field

from bridge.evals.samples import MAX_SAMPLES

_T = TypeVar("_T")

Samples = Annotated[int, Field(ge=0, le=MAX_SAMPLES)]
MaxTokens = Annotated[int, Field(ge=1, le=4096)]
TokenBudget = Annotated[int, Field(ge=1, le=10_000_000)]
Deadline = Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)]


@dataclass(frozen=True)
class Bounds:
    limit: int = 0
    max_tokens: int = 256
    token_budget: int = 100_000
    deadline: float = 120.0


BoundsOf = Callable[[Mapping[str, Any]], Bounds]
"""The bounds of one job's samples."""


class EvalOverrides(BaseModel):
    """The eval keys a source or route table may set; unset keys are inherited."""

    eval_samples: Samples | None = None
    eval_max_tokens: MaxTokens | None = None
    eval_token_budget: TokenBudget | None = None
    eval_deadline: Deadline | None = None

    def over(self, bounds: Bounds) -> Bounds:
        """``bounds`` with the keys this table sets."""
        return Bounds(
            limit=_either(self.eval_samples, bounds.limit),
            max_tokens=_either(self.eval_max_tokens, bounds.max_tokens),
            token_budget=_either(self.eval_token_budget, bounds.token_budget),
            deadline=_either(self.eval_deadline, bounds.deadline),
        )

    @property
    def samples_on(self) -> bool:
        return bool(self.eval_samples)


def _either(given: _T | None, inherited: _T) -> _T:
    return inherited if given is None else given


class MatchingTable(Protocol):
    """A route: eval keys, and which jobs it takes."""

    def matches(self, job: Mapping[str, Any]) -> bool: ...

    def over(self, bounds: Bounds) -> Bounds: ...


def bounds_of(base: Bounds, routes: Sequence[MatchingTable]) -> BoundsOf:
    """The bounds of a job: ``base`` (the global settings with its source's keys), with the
    keys of the first route that matches the job (the route that places its run)."""

    def of(job: Mapping[str, Any]) -> Bounds:
        route = next((r for r in routes if r.matches(job)), None)
        return base if route is None else route.over(base)

    return of


def may_sample(base: Bounds, routes: Sequence[EvalOverrides]) -> bool:
    """Whether any job of the source may be sampled (the global or source value is on, or a
    route turns it on)."""
    return base.limit > 0 or any(route.samples_on for route in routes)
