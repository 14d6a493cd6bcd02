"""The other providers' APIs the emulator serves beside OpenAI's, over the same account: each
job's scenario names its provider, and each API lists and serves only its own jobs."""

from __future__ import annotations

from bridge.emulator.account import Account
from bridge.emulator.api import ProviderApi
from bridge.emulator.fireworks import FireworksApi
from bridge.emulator.together import TogetherApi


def provider_apis(account: Account) -> list[ProviderApi]:
    """One API per provider (their paths do not overlap OpenAI's or each other's)."""
    return [TogetherApi(account), FireworksApi(account, account.scenario.fireworks_account_id)]
