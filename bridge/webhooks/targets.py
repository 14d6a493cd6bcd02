"""Where events go: signed webhooks and Apprise chat targets, each with its filters.

Filters (all optional; every one given must match):
- ``event_types``: event types or shell-style globs (``fine_tuning.job.*``,
  ``fine_tuning.job.succeeded``); None means every type.
- ``models``: base models or globs (``gpt-4o-mini*``) matched against the job's ``model``.
- ``metadata``: key/value pairs that must all equal the job's metadata.

A test ping (``ftbridge webhooks test``) ignores the filters.

Targets come from ``FTBRIDGE_WEBHOOK_URLS`` (named ``env-1``, ``env-2``, ...; all signed with
``FTBRIDGE_WEBHOOK_SECRET``, several comma-separated secrets for a rotation),
``FTBRIDGE_CHAT_URLS`` (``chat-1``, ...) and the TOML file's ``[[webhooks]]`` and ``[[chats]]``
tables. A ``[[webhooks]]`` table takes ``name``, ``url``, ``secret`` or ``secrets``,
``event_types``, ``metadata``, ``models`` and ``enabled``; a ``[[chats]]`` table the same with an
Apprise ``url`` and no secret.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from bridge.errors import ConfigError
from bridge.webhooks.egress import chat_host
from bridge.webhooks.events import WebhookEvent
from bridge.webhooks.signing import secret_problem
from bridge.webhooks.ssrf import literal_ip, refusal_reason


class _Filtered(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    event_types: list[str] | None = None
    metadata: dict[str, str] | None = None
    models: list[str] | None = None
    enabled: bool = True

    def matches(self, event: WebhookEvent) -> bool:
        if not self.enabled:
            return False
        if event.is_test:
            return True
        return (
            _any_glob(self.event_types, event.type)
            and _any_glob(self.models, event.data.get("model"))
            and _metadata_matches(self.metadata, event.data.get("metadata"))
        )


def _any_glob(patterns: Sequence[str] | None, value: object) -> bool:
    if patterns is None:
        return True
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _metadata_matches(wanted: Mapping[str, str] | None, metadata: object) -> bool:
    if not wanted:
        return True
    have = metadata if isinstance(metadata, Mapping) else {}
    return all(have.get(key) == value for key, value in wanted.items())


class WebhookTarget(_Filtered):
    """An http(s) endpoint; every delivery is signed with every secret."""

    kind: ClassVar[str] = "webhook"
    url: str
    secrets: list[SecretStr]

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("url is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("url must be http(s)://host/...")
        if url.userinfo:
            raise ValueError("url must not carry a user or password (deliveries are signed)")
        return value

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        if not value:
            raise ValueError("a webhook target needs at least one secret")
        for secret in value:
            problem = secret_problem(secret.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for s in self.secrets]


class ChatTarget(_Filtered):
    """An Apprise URL (Slack, Teams, Discord, email, PagerDuty, ...). It carries tokens."""

    kind: ClassVar[str] = "chat"
    url: SecretStr

    @field_validator("url")
    @classmethod
    def _apprise_url(cls, value: SecretStr) -> SecretStr:
        import apprise  # noqa: PLC0415 - only where chat targets are configured

        if apprise.Apprise.instantiate(value.get_secret_value()) is None:
            raise ValueError("url is not an Apprise URL that this install supports")
        return value


Target = WebhookTarget | ChatTarget


@dataclass(frozen=True)
class Targets:
    webhooks: tuple[WebhookTarget, ...] = ()
    chats: tuple[ChatTarget, ...] = ()
    allow_private: bool = False

    def __iter__(self) -> Iterator[Target]:
        yield from self.webhooks
        yield from self.chats

    def __len__(self) -> int:
        return len(self.webhooks) + len(self.chats)

    def get(self, name: str) -> Target | None:
        return next((t for t in self if t.name == name), None)

    def matching(self, event: WebhookEvent) -> list[Target]:
        return [t for t in self if t.matches(event)]

    def secrets(self) -> list[str]:
        """Every secret value (webhook secrets, chat URLs), for the log redactor."""
        found = [s for w in self.webhooks for s in w.secret_values()]
        return found + [c.url.get_secret_value() for c in self.chats]


def targets_from_settings(
    webhook_urls: Sequence[str] = (),
    webhook_secret: str | None = None,
    toml_targets: Sequence[Mapping[str, Any]] = (),
    chat_urls: Sequence[str] = (),
    allow_private: bool = False,
    *,
    toml_chats: Sequence[Mapping[str, Any]] = (),
) -> Targets:
    """Validate every target; raise :class:`ConfigError` with one line naming the bad one."""
    env_secrets = _split(webhook_secret or "")
    env_urls = _flatten(webhook_urls)
    if env_urls and not env_secrets:
        raise ConfigError(
            "webhook target 'env-1': no secret; set FTBRIDGE_WEBHOOK_SECRET (whsec_..., "
            "several comma-separated during a rotation)"
        )
    webhooks = [
        _webhook({"name": f"env-{i}", "url": url, "secrets": env_secrets}, allow_private)
        for i, url in enumerate(env_urls, start=1)
    ]
    webhooks += [
        _webhook(_normalise(table, f"webhook-{i}"), allow_private)
        for i, table in enumerate(toml_targets, start=1)
    ]
    chats = [
        _chat({"name": f"chat-{i}", "url": url}, allow_private)
        for i, url in enumerate(_flatten(chat_urls), start=1)
    ]
    chats += [
        _chat({"name": f"chat-toml-{i}", **dict(table)}, allow_private)
        for i, table in enumerate(toml_chats, 1)
    ]
    targets = Targets(tuple(webhooks), tuple(chats), allow_private)
    _unique_names(targets)
    return targets


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _flatten(values: Sequence[str]) -> list[str]:
    return [part for value in values for part in _split(value)]


def _normalise(table: Mapping[str, Any], default_name: str) -> dict[str, Any]:
    values = {"name": default_name, **dict(table)}
    if "secret" in values:
        secret = values.pop("secret")
        values["secrets"] = [*values.get("secrets", []), *_split(str(secret))]
    return values


def _webhook(values: dict[str, Any], allow_private: bool) -> WebhookTarget:
    name = str(values.get("name"))
    try:
        target = WebhookTarget(**values)
    except ValidationError as error:
        raise ConfigError(f"webhook target {name!r}: {_one_line(error)}") from None
    if not allow_private:
        ip = literal_ip(httpx.URL(target.url).host)
        reason = refusal_reason(ip) if ip is not None else None
        if reason:
            raise ConfigError(
                f"webhook target {name!r}: {reason}; set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true "
                "to allow private addresses"
            )
    return target


def _chat(values: dict[str, Any], allow_private: bool = False) -> ChatTarget:
    name = str(values.get("name"))
    try:
        target = ChatTarget(**values)
    except ValidationError as error:
        raise ConfigError(f"chat target {name!r}: {_one_line(error)}") from None
    reason = None if allow_private else _private_host(chat_host(target.url.get_secret_value()))
    if reason:
        raise ConfigError(
            f"chat target {name!r}: {reason}; set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true "
            "to allow private addresses"
        )
    return target


def _private_host(host: str | None) -> str | None:
    """Why a host named in a target is refused before any lookup (an IP address that is not
    public, or ``localhost``); names are checked again where the connection is made."""
    if host is None:
        return None
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return f"{host} is not public (loopback)"
    ip = literal_ip(host)
    return refusal_reason(ip) if ip is not None else None


def _one_line(error: ValidationError) -> str:
    """The first problem, never the value given (it may be a secret)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "target"
    more = f" ({error.error_count() - 1} more)" if error.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown key {field!r}{more}"
    if first["type"] == "missing":
        return f"{field} is required{more}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {message}{more}"


def _unique_names(targets: Targets) -> None:
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise ConfigError(f"{target.kind} target {target.name!r}: the name is used twice")
        seen.add(target.name)
