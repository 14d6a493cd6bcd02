"""OpenAI-shaped API errors."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the emulator answers with, shaped as OpenAI shapes them."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {message, type, param, code}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    """404 for an unknown job, file or checkpoint."""
    return ApiError(404, f"No such {what}: '{ident}'", param=param, code=f"{what}_not_found")


def invalid_url(method: str, path: str) -> ApiError:
    """404 for a route the API does not have."""
    return ApiError(404, f"Invalid URL ({method} {path})")


def bad_param(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """400 for a parameter the API rejects."""
    return ApiError(400, message, param=param, code=code)


def server_fault(status: int) -> ApiError:
    """An injected failure (429, 5xx, ...)."""
    if status == 429:
        return ApiError(
            429,
            "Rate limit reached for requests. Please try again later.",
            type="requests",
            code="rate_limit_exceeded",
        )
    if status == 503:
        return ApiError(
            503, "The server is overloaded or not ready yet.", type="server_error", code=None
        )
    return ApiError(
        status,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
    )
