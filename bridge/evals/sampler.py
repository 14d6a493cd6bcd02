"""The chat calls of the samples, bounded, and done once per job.

Bounds: at most ``limit`` (<= 200) conversations, ``max_tokens`` per answer, ``token_budget``
tokens per job (prompt and answer, both models; sampling stops before a pair that could pass
it), and ``deadline`` seconds. Once: the store records ``samples:started`` (kept across lost
segments) before the first call, so a restart or a replay never asks, nor bills, again; a
restart in the middle leaves the reason in the summary instead of a second table. A failure
(429, 5xx, a model that cannot be sampled) ends the sampling with what was answered so far and
its reason in the summary; it never holds the run open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bridge import prices
from bridge.errors import BridgeError
from bridge.evals import samples
from bridge.evals.samples import Answer, Prompt
from bridge.mapping import ArtifactSpec
from bridge.ports import JobState, Json, RunSink, StateStore

log = structlog.get_logger(__name__)

STARTED = "samples:started"


class Chat(Protocol):
    """A provider's chat completions API (the source's client and key)."""

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> Answer: ...


@dataclass(frozen=True)
class Bounds:
    limit: int = 0
    max_tokens: int = 256
    token_budget: int = 100_000
    deadline: float = 120.0


class Sampler:
    def __init__(
        self,
        chat: Chat,
        sink: RunSink,
        store: StateStore,
        bounds: Bounds,
        *,
        read_file: Callable[[str], bytes],
        price_table: Mapping[str, float] = prices.DEFAULT_PRICES,
    ) -> None:
        self.chat = chat
        self.sink = sink
        self.store = store
        self.bounds = bounds
        self.read_file = read_file
        self.prices = price_table

    def wanted(self, state: JobState) -> bool:
        method = state.job.get("method")
        kind = method.get("type") if isinstance(method, Mapping) else "supervised"
        return (
            self.bounds.limit > 0
            and state.status == "succeeded"
            and kind in (None, "supervised")
            and isinstance(state.job.get("fine_tuned_model"), str)
            and isinstance(state.job.get("model"), str)
        )

    def run(self, state: JobState) -> None:
        """Sample once, log the table and the figures; never raises."""
        if not self.wanted(state):
            return
        if STARTED in self.store.logged_artifacts(state.job_id):
            if "samples" not in self.store.logged_artifacts(state.job_id):
                self._summary(state.job_id, {"samples/skipped": "interrupted; not asked again"})
            return
        try:
            picked = self._prompts(state)
        except BridgeError as error:
            self._summary(state.job_id, {"samples/skipped": f"file unreadable: {error}"})
            return
        self.store.mark_artifact(state.job_id, STARTED, None)
        pairs, reason, spent = self._ask(state.job, picked)
        self._log(state, pairs, reason, spent)

    def _prompts(self, state: JobState) -> list[Prompt]:
        for role in ("validation_file", "training_file"):
            file_id = state.job.get(role)
            if isinstance(file_id, str):
                return samples.prompts(self.read_file(file_id), self.bounds.limit)
        return []

    def _ask(
        self, job: Json, picked: list[Prompt]
    ) -> tuple[list[tuple[Prompt, Answer, Answer]], str | None, int]:
        base, tuned = str(job["model"]), str(job["fine_tuned_model"])
        ends = time.monotonic() + self.bounds.deadline
        pairs: list[tuple[Prompt, Answer, Answer]] = []
        spent = 0
        for prompt in picked:
            if time.monotonic() > ends:
                return pairs, "deadline reached", spent
            if spent + self._worst(prompt) > self.bounds.token_budget:
                return pairs, "token budget reached", spent
            try:
                first = self.chat.chat(base, prompt.messages, self.bounds.max_tokens)
                spent += first.tokens
                second = self.chat.chat(tuned, prompt.messages, self.bounds.max_tokens)
                spent += second.tokens
            except BridgeError as error:
                return pairs, f"chat API: {error}", spent
            pairs.append((prompt, first, second))
        return pairs, None, spent

    def _worst(self, prompt: Prompt) -> int:
        """Tokens a pair may take at most: its prompt (about 4 characters a token) and two
        answers of ``max_tokens``."""
        chars = sum(len(str(m.get("content", ""))) for m in prompt.messages)
        return 2 * (chars // 4 + 1 + self.bounds.max_tokens)

    def _log(
        self,
        state: JobState,
        pairs: list[tuple[Prompt, Answer, Answer]],
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
            key="samples",
            name=f"{state.job_id}-samples"[:128],
            type="evaluation",
            metadata={k: v for k, v in summary.items() if not isinstance(v, str) or v},
            tables={"samples": table},
        )
        try:
            self.sink.log_artifact(state.job_id, spec)
            self.store.mark_artifact(state.job_id, "samples", None)
        except BridgeError as error:
            summary["samples/stopped"] = f"W&B did not take the table: {error}"
        self._summary(state.job_id, summary)
        log.info("samples.logged", job_id=state.job_id, count=len(pairs), reason=reason)

    def _summary(self, job_id: str, summary: Json) -> None:
        try:
            self.sink.update_summary(job_id, summary)
        except BridgeError as error:
            log.warning("samples.summary_failed", job_id=job_id, error=str(error))
