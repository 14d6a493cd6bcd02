"""Chat completions (``POST /v1/chat/completions``) for base and fine-tuned models: each
answer is a pure function of the model and the messages, so that tests can check every cell
of a samples table. A model whose name holds ``:nosample:`` cannot be sampled (400).

The same answers serve every provider's chat path (OpenAI's and Together's
``/v1/chat/completions``, Fireworks' ``/inference/v1/chat/completions``): a fine-tuned model
is OpenAI's ``ft:...`` or one of the fine-tuned models the providers' jobs made."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any

from bridge.emulator.errors import ApiError


def answer(
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int | None = None,
    *,
    tuned: bool | None = None,
) -> str:
    """The model's answer: who answers (``tuned`` for a fine-tuned model: by default one
    named ``ft:...``), a digest of model and messages, and the last user message's words
    backwards (one token per word), cut to ``max_tokens`` words."""
    digest = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()
    last = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    who = "tuned" if (model.startswith("ft:") if tuned is None else tuned) else "base"
    words = [who, digest[:8], *reversed(last.split())]
    return " ".join(words[:max_tokens] if max_tokens else words)


def tokens(text: str) -> int:
    return len(text.split())


def complete(body: Any, tuned_models: Collection[str] = ()) -> dict[str, Any]:
    """The chat completion object of a request body; ``tuned_models`` are the fine-tuned
    models of other providers' jobs."""
    model = body.get("model") if isinstance(body, dict) else None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(model, str) or not isinstance(messages, list):
        raise ApiError(400, "model and messages are required.")
    if ":nosample:" in model:
        raise ApiError(400, f"The model `{model}` does not support chat completions.")
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    tuned = model.startswith("ft:") or model in tuned_models
    text = answer(model, messages, limit if isinstance(limit, int) else None, tuned=tuned)
    prompt = sum(tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    return {
        "id": "chatcmpl-" + hashlib.sha256(text.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": tokens(text),
            "total_tokens": prompt + tokens(text),
        },
    }
