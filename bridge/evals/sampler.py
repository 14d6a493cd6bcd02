"""The chat calls of the samples, bounded, and each billed once.

Bounds (:mod:`bridge.evals.bounds`, per job): at most ``limit`` (<= 200) conversations,
``max_tokens`` per answer, ``token_budget`` tokens per job (prompt and answer, both models;
sampling stops before a pair that could pass it), and ``deadline`` seconds (per attempt).
Once: each answer is kept in the store as soon as it arrives, and the table is marked logged
(``samples``); a restart in the middle asks only for the answers it lacks (the answer whose
request was under way when the process died is asked again: the calls go one at a time, so
one per kill) and logs the one table; a replay after the table asks nothing. A failure (429, 5xx, a
model that cannot be sampled) ends the sampling with what was answered so far and its reason
in the summary; it never holds the run open.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import structlog

from bridge import prices
from bridge.errors import BridgeError
from bridge.evals import samples
from bridge.evals.bounds import Bounds, BoundsOf
from bridge.evals.samples import Answer, Prompt
from bridge.mapping import ArtifactSpec
from bridge.ports import JobState, Json, RunSink, StateStore

log = structlog.get_logger(__name__)

LOGGED = "samples"
Who = Literal["base", "tuned"]
Pair = tuple[Prompt, Answer, Answer]


class Chat(Protocol):
    """A provider's chat completions API (the source's client and key)."""

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer: ...


def fixed(bounds: Bounds) -> BoundsOf:
    """The same bounds for every job."""
    return lambda _job: bounds


class Sampler:
    def __init__(
        self,
        chat: Chat,
        sink: RunSink,
        store: StateStore,
        bounds: Bounds | BoundsOf,
        *,
        read_file: Callable[[str], bytes],
        price_table: Mapping[str, float] = prices.DEFAULT_PRICES,
    ) -> None:
        self.chat = chat
        self.sink = sink
        self.store = store
        self.bounds_of = fixed(bounds) if isinstance(bounds, Bounds) else bounds
        self.read_file = read_file
        self.prices = price_table

    def wanted(self, state: JobState, bounds: Bounds | None = None) -> bool:
        method = state.job.get("method")
        kind = method.get("type") if isinstance(method, Mapping) else "supervised"
        limit = (bounds or self.bounds_of(state.job)).limit
        return (
            limit > 0
            and state.status == "succeeded"
            and kind in (None, "supervised")
            and isinstance(state.job.get("fine_tuned_model"), str)
            and isinstance(state.job.get("model"), str)
        )

    def run(self, state: JobState) -> None:
        """Sample (what is not answered yet), log the table and the figures; never raises."""
        bounds = self.bounds_of(state.job)
        if not self.wanted(state, bounds) or LOGGED in self.store.logged_artifacts(state.job_id):
            return
        try:
            picked = self._prompts(state, bounds.limit)
        except BridgeError as error:
            self._summary(state.job_id, {"samples/skipped": f"file unreadable: {error}"})
            return
        pairs, reason, spent = self._ask(state, picked, bounds)
        self._log(state, pairs, reason, spent)

    def _prompts(self, state: JobState, limit: int) -> list[Prompt]:
        for role in ("validation_file", "training_file"):
            file_id = state.job.get(role)
            if isinstance(file_id, str):
                return samples.prompts(self.read_file(file_id), limit)
        return []

    def _ask(
        self, state: JobState, picked: list[Prompt], bounds: Bounds
    ) -> tuple[list[Pair], str | None, int]:
        job = state.job
        models: dict[Who, str] = {"base": str(job["model"]), "tuned": str(job["fine_tuned_model"])}
        kept = {
            key: _answer(value) for key, value in self.store.sample_answers(state.job_id).items()
        }
        ends = time.monotonic() + bounds.deadline
        pairs: list[Pair] = []
        spent = 0
        for index, prompt in enumerate(picked):
            if time.monotonic() > ends:
                return pairs, "deadline reached", spent
            answered = sum((index, who) in kept for who in models)
            if spent + self._worst(prompt, bounds, answered=answered) > bounds.token_budget:
                return pairs, "token budget reached", spent
            answers: dict[Who, Answer] = {}
            for who, model in models.items():
                try:
                    answers[who] = kept.get((index, who)) or self._answer(
                        state.job_id, index, who, model, prompt, max_tokens=bounds.max_tokens
                    )
                except BridgeError as error:
                    return pairs, f"chat API: {error}", spent
                spent += answers[who].tokens
            pairs.append((prompt, answers["base"], answers["tuned"]))
        return pairs, None, spent

    def _answer(
        self, job_id: str, index: int, who: Who, model: str, prompt: Prompt, *, max_tokens: int
    ) -> Answer:
        """Ask, and keep the answer at once: it is billed, and never asked again."""
        answer = self.chat.chat(model, prompt.messages, max_tokens)
        self.store.save_sample_answer(job_id, index, who, dataclasses.asdict(answer))
        return answer

    @staticmethod
    def _worst(prompt: Prompt, bounds: Bounds, *, answered: int = 0) -> int:
        """Tokens a pair's answers not yet kept may take at most: its prompt (about 4
        characters a token) and an answer of ``max_tokens``, for each."""
        chars = sum(len(str(m.get("content", ""))) for m in prompt.messages)
        return (2 - answered) * (chars // 4 + 1 + bounds.max_tokens)

    def _log(
        self,
        state: JobState,
        pairs: list[Pair],
        reason: str | None,
        spent: int,
    ) -> None:
        summary: Json = {**samples.figures(pairs), "samples/count": len(pairs)}
        summary["samples/tokens"] = spent
        cost = prices.estimated_cost(state.job.get("model"), spent, self.prices)
        if cost is not None:
            summary["samples/estimated_cost_usd"] = cost
        if reason is not None:
            summary["samples/stopped"] = reason
        table = (samples.COLUMNS, [samples.row(*pair) for pair in pairs])
        spec = ArtifactSpec(
            key=LOGGED,
            name=f"{state.job_id}-samples"[:128],
            type="evaluation",
            metadata={k: v for k, v in summary.items() if not isinstance(v, str) or v},
            tables={"samples": table},
        )
        try:
            self.sink.log_artifact(state.job_id, spec)
            self.store.mark_artifact(state.job_id, LOGGED, in_segment=False)
        except BridgeError as error:
            summary["samples/stopped"] = f"W&B did not take the table: {error}"
        self._summary(state.job_id, summary)
        log.info("samples.logged", job_id=state.job_id, count=len(pairs), reason=reason)

    def _summary(self, job_id: str, summary: Json) -> None:
        try:
            self.sink.update_summary(job_id, summary)
        except BridgeError as error:
            log.warning("samples.summary_failed", job_id=job_id, error=str(error))


def _answer(kept: Json) -> Answer:
    """An answer as the store keeps it."""
    fields = {f.name for f in dataclasses.fields(Answer)}
    return Answer(**{k: v for k, v in kept.items() if k in fields})
