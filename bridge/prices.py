"""Estimated training cost (pure): trained tokens x price per million training tokens.

``trained_tokens`` as the API reports it already counts every epoch (tokens in the training
file x epochs), so the estimate is ``trained_tokens / 1e6 x price``. Prices are USD per 1M
training tokens from OpenAI's published fine-tuning price list; they change, and
reinforcement fine-tuning is billed by the hour, so override or extend them in the TOML
file's ``[prices]`` table (``"gpt-4o-mini" = 3.0``). A model matches the longest key that
is a prefix of its name; a model with no price gets no estimate.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PRICES: dict[str, float] = {
    "gpt-4o-mini": 3.0,
    "gpt-4o": 25.0,
    "gpt-4.1-nano": 1.5,
    "gpt-4.1-mini": 5.0,
    "gpt-4.1": 25.0,
    "gpt-3.5-turbo": 8.0,
    "davinci-002": 6.0,
    "babbage-002": 0.4,
}


def price_for(model: str, prices: Mapping[str, float]) -> float | None:
    matches = [key for key in prices if model.startswith(key)]
    return prices[max(matches, key=len)] if matches else None


def estimated_cost(
    model: object, trained_tokens: object, prices: Mapping[str, float]
) -> float | None:
    if not isinstance(model, str) or isinstance(trained_tokens, bool):
        return None
    if not isinstance(trained_tokens, int) or trained_tokens < 0:
        return None
    price = price_for(model, prices)
    return None if price is None else round(trained_tokens / 1_000_000 * price, 6)
