"""The fine-tuning APIs the bridge reads: the default one from ``OPENAI_*``, or several from
the TOML file's ``[[sources]]`` tables, each with its credentials, filters and destination."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bridge.errors import ConfigError
from bridge.evals.bounds import EvalOverrides
from bridge.routing import JobFilter, Route
from bridge.settings import Settings
from bridge.sources.fireworks import FireworksSource
from bridge.sources.openai import OpenAISource
from bridge.sources.together import TogetherSource


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


class SourceConfig(EvalOverrides):
    """One fine-tuning API. ``kind``: ``openai`` (also Azure's v1 API and any compatible
    endpoint, by ``base_url``), ``azure`` (Azure's dated API versions: ``azure_endpoint``
    and ``api_version``), ``together`` (Together AI; ``base_url`` is its host, by default
    ``https://api.together.ai``) or ``fireworks`` (Fireworks AI: ``account_id``, and
    ``base_url`` when not Fireworks' own host). The key is ``api_key``, or the environment
    variable named by ``api_key_env``. The eval keys (``eval_samples``, ...) bound the
    samples of its jobs (see :mod:`bridge.evals.bounds`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["openai", "azure", "together", "fireworks"] = "openai"
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    base_url: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    organization: str | None = None
    project: str | None = None
    # Fireworks: the account whose jobs are read (its id, as in ``accounts/<id>/...``).
    account_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,63}$")
    filters: JobFilter = Field(default_factory=JobFilter)
    wandb: Destination = Field(default_factory=Destination)

    @model_validator(mode="after")
    def _azure_needs_endpoint(self) -> SourceConfig:
        if self.kind == "azure" and not (self.azure_endpoint and self.api_version):
            raise ValueError("kind 'azure' needs azure_endpoint and api_version")
        return self

    @model_validator(mode="after")
    def _fireworks_needs_account(self) -> SourceConfig:
        if self.kind == "fireworks" and not self.account_id:
            raise ValueError("kind 'fireworks' needs account_id (as in accounts/<id>/...)")
        return self

    def key(self, environ: Mapping[str, str]) -> str:
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_env and environ.get(self.api_key_env):
            return environ[self.api_key_env]
        where = f"environment variable {self.api_key_env}" if self.api_key_env else "api_key"
        raise ConfigError(f"source {self.name!r}: no API key ({where} is not set)")


def source_configs(settings: Settings) -> list[SourceConfig]:
    """The ``[[sources]]`` tables, or one source named ``openai`` from ``OPENAI_*``."""
    if not settings.sources:
        key = settings.openai_api_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                "OPENAI_API_KEY is not set (or run `ftbridge demo` to try it without)"
            )
        return [
            _validated(
                {
                    "name": "openai",
                    "api_key": key.get_secret_value(),
                    "base_url": settings.openai_base_url,
                    "organization": settings.openai_organization,
                    "project": settings.openai_project,
                    "filters": settings.filters,
                },
                "openai",
            )
        ]
    configs = [
        _validated(table, str(table.get("name", f"#{i}")))
        for i, table in enumerate(settings.sources, start=1)
    ]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sources: names must be unique, got {names}")
    return configs


def _validated(table: Mapping[str, Any], label: str) -> SourceConfig:
    try:
        return SourceConfig.model_validate(dict(table))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "table"
        raise ConfigError(f"source {label!r}: {where}: {first['msg']}") from None


def routes_of(settings: Settings) -> list[Route]:
    return [_route(table, i) for i, table in enumerate(settings.routes, start=1)]


def _route(table: Mapping[str, Any], number: int) -> Route:
    """One ``[[routes]]`` table; an error names the route (its number, and its project when
    it has one) and the key."""
    try:
        return Route.model_validate(table)
    except ValidationError as error:
        first = error.errors()[0]
        project = table.get("project") if isinstance(table, Mapping) else None
        label = f"route #{number}" + (f" (project {project!r})" if project else "")
        where = ".".join(map(str, first["loc"])) or "table"
        raise ConfigError(f"{label}: {where}: {first['msg']}") from None


def make_source(
    config: SourceConfig, settings: Settings, environ: Mapping[str, str]
) -> OpenAISource | TogetherSource | FireworksSource:
    key = config.key(environ)
    if config.kind == "together":
        return TogetherSource.create(
            api_key=key,
            base_url=config.base_url,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
            name=config.name,
            key_hint=f"environment variable {config.api_key_env}"
            if config.api_key_env
            else f"api_key of source {config.name!r}",
        )
    if config.kind == "fireworks" and config.account_id:
        return FireworksSource.create(
            api_key=key,
            account_id=config.account_id,
            base_url=config.base_url,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
            name=config.name,
        )
    if config.kind == "azure" and config.azure_endpoint:
        client = openai.AzureOpenAI(
            api_key=key,
            azure_endpoint=config.azure_endpoint,
            api_version=config.api_version,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
        )
        return OpenAISource(client, config.name, metadata=config.filters.metadata)
    return OpenAISource.create(
        api_key=key,
        base_url=config.base_url,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        organization=config.organization,
        project=config.project,
        name=config.name,
        metadata=config.filters.metadata,
    )
