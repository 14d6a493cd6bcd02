"""Pure parts of the samples: prompts from a chat JSONL file, scores, the table. No I/O."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_SAMPLES = 200
COLUMNS = [
    "prompt",
    "reference",
    "base_answer",
    "tuned_answer",
    "reference_chars",
    "base_chars",
    "tuned_chars",
    "base_latency_s",
    "tuned_latency_s",
    "base_tokens",
    "tuned_tokens",
]


@dataclass(frozen=True)
class Prompt:
    """A conversation without its final assistant turn, and that turn (the reference)."""

    messages: list[dict[str, Any]]
    reference: str


@dataclass(frozen=True)
class Answer:
    text: str
    latency: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def chat_request(model: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """The body of an OpenAI-style chat completions request (Together's and Fireworks' too)."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens}


def answer_of(completion: Mapping[str, Any], latency: float) -> Answer:
    """An OpenAI-style chat completion object as an answer: the first choice's text and the
    usage's token counts (missing or odd fields count as empty and 0)."""
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    text = message.get("content") if isinstance(message, Mapping) else None
    usage = completion.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    return Answer(
        text=text if isinstance(text, str) else "",
        latency=latency,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def prompts(content: bytes, limit: int) -> list[Prompt]:
    """Up to ``limit`` (at most :data:`MAX_SAMPLES`) chats whose last turn is the assistant's."""
    found: list[Prompt] = []
    for line in content.decode("utf-8", errors="replace").splitlines():
        if len(found) >= min(limit, MAX_SAMPLES):
            break
        try:
            item = json.loads(line)
        except ValueError:
            continue
        messages = item.get("messages") if isinstance(item, dict) else None
        if not isinstance(messages, list) or len(messages) < 2:
            continue
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            reference = last.get("content")
            if isinstance(reference, str):
                found.append(Prompt([m for m in messages[:-1] if isinstance(m, dict)], reference))
    return found


def similarity(answer: str, reference: str) -> float:
    """difflib's ratio of the two texts (1.0: the same)."""
    return difflib.SequenceMatcher(None, answer, reference).ratio()


def prompt_text(prompt: Prompt) -> str:
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt.messages)


def row(prompt: Prompt, base: Answer, tuned: Answer) -> list[Any]:
    return [
        prompt_text(prompt),
        prompt.reference,
        base.text,
        tuned.text,
        len(prompt.reference),
        len(base.text),
        len(tuned.text),
        round(base.latency, 4),
        round(tuned.latency, 4),
        base.tokens,
        tuned.tokens,
    ]


def figures(pairs: list[tuple[Prompt, Answer, Answer]]) -> dict[str, float]:
    """Exact match and mean similarity to the reference, for each model."""
    if not pairs:
        return {}
    n = len(pairs)
    out: dict[str, float] = {}
    for who, answers in (
        ("base", [(p.reference, b.text) for p, b, _ in pairs]),
        ("tuned", [(p.reference, t.text) for p, _, t in pairs]),
    ):
        out[f"samples/{who}_exact_match"] = sum(a.strip() == r.strip() for r, a in answers) / n
        out[f"samples/{who}_similarity"] = sum(similarity(a, r) for r, a in answers) / n
    return out
