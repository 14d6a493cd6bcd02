"""The bridge's errors: one root, retryable ones apart from permanent ones.

Each class's docstring is its default message.
"""

from __future__ import annotations


class BridgeError(Exception):
    """ftbridge failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(BridgeError):
    """The configuration is not valid."""


class StoreError(BridgeError):
    """The state store could not be used."""


class StoreUnavailable(StoreError):
    """The database server did not answer (restarting, unreachable); tried again later."""


class RetryableError(BridgeError):
    """A transient failure; the same work is tried again later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceUnavailable(RetryableError):
    """The fine-tuning API could not be reached or answered with a server error."""


class SourceRejected(BridgeError):
    """The fine-tuning API refused the request (check the API key and base URL)."""


class JobNotFound(BridgeError):
    """The fine-tuning job does not exist (or the key cannot see it)."""


class SinkUnavailable(RetryableError):
    """W&B did not take the run; it is tried again on a later cycle."""


class EndlessPaging(SourceUnavailable):
    """The API's pages do not end (a repeated cursor, only ids already seen, or more pages
    than the bridge reads per job and cycle); the job is tried again later."""

    kind = "bad_response"


class Interrupted(RetryableError):
    """The bridge is stopping: the work is left for the next start."""
