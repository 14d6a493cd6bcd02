"""One settings object, built once at start-up from the environment and an optional TOML file.

The SDKs' own variables (``OPENAI_API_KEY``, ``WANDB_PROJECT``, ...) keep their names and
meaning; the bridge's own settings take the ``FTBRIDGE_`` prefix. In the TOML file every
setting is written by its field name (``poll_interval = 5``, ``wandb_project = "x"``).
The environment wins over the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridge.errors import ConfigError

_CONFIG_ENV = "FTBRIDGE_CONFIG"


def _sdk(name: str) -> Any:
    """A field read from an SDK's own environment variable (or its field name in TOML)."""
    return Field(default=None, validation_alias=AliasChoices(name, name.lower()))


class Settings(BaseSettings):
    """Everything the bridge can be told. Built by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="FTBRIDGE_",
        extra="forbid",
        populate_by_name=True,
        case_sensitive=False,
    )

    # The bridge's own settings (FTBRIDGE_*).
    database_url: str = "sqlite:///ftbridge.db"
    poll_interval: float = Field(default=10.0, ge=0.5, le=3600)
    request_timeout: float = Field(default=20.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_max: float = Field(default=300.0, ge=1)
    wandb_native_jobs: Literal["skip", "mirror"] = "skip"
    wandb_init_timeout: float = Field(default=60.0, gt=0)
    wandb_finish_timeout: float = Field(default=10.0, gt=0)
    wandb_flush_interval: float = Field(default=1.0, gt=0, le=60)
    wandb_upload_interval: int = Field(default=2, ge=1, le=300)
    shutdown_timeout: float = Field(default=25.0, gt=0)
    webhook_urls: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    chat_urls: SecretStr | None = None
    notify_backfill: bool = False
    notify_final_wait: float = Field(default=120.0, ge=0, le=86400)
    webhooks: list[dict[str, Any]] = Field(default_factory=list)
    chats: list[dict[str, Any]] = Field(default_factory=list)
    # The health server (/healthz, /readyz, /metrics): off unless http_port is set.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    fetch_workers: int = Field(default=4, ge=1, le=32)
    lease_seconds: float = Field(default=30.0, ge=3, le=600)
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    log_datasets: bool = False
    dataset_sample_rows: int = Field(default=100, ge=1, le=10_000)
    sources: list[dict[str, Any]] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)
    routes: list[dict[str, Any]] = Field(default_factory=list)
    prices: dict[str, float] = Field(default_factory=dict)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The SDKs' own variables.
    openai_api_key: SecretStr | None = _sdk("OPENAI_API_KEY")
    openai_base_url: str | None = _sdk("OPENAI_BASE_URL")
    openai_organization: str | None = _sdk("OPENAI_ORG_ID")
    openai_project: str | None = _sdk("OPENAI_PROJECT_ID")
    wandb_api_key: SecretStr | None = _sdk("WANDB_API_KEY")
    wandb_base_url: str | None = _sdk("WANDB_BASE_URL")
    wandb_mode: Literal["online", "offline", "disabled"] | None = _sdk("WANDB_MODE")
    wandb_dir: Path | None = _sdk("WANDB_DIR")
    wandb_project: str = Field(
        default="fine-tunes", validation_alias=AliasChoices("WANDB_PROJECT", "wandb_project")
    )
    wandb_entity: str | None = _sdk("WANDB_ENTITY")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("openai_base_url", "wandb_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def effective_wandb_mode(self) -> Literal["online", "offline", "disabled"]:
        """``WANDB_MODE`` when set; otherwise online with a key and offline without."""
        if self.wandb_mode is not None:
            return self.wandb_mode
        return "online" if self.wandb_api_key else "offline"

    def secrets(self) -> list[str]:
        """The secret values, for the log redactor."""
        found = [self.openai_api_key, self.wandb_api_key, self.webhook_secret, self.chat_urls]
        values = [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]
        values += [str(t["api_key"]) for t in self.sources if t.get("api_key")]
        # Several comma-separated secrets (a rotation) are redacted one by one too.
        return values + [part for v in values if "," in v for part in v.split(",") if part]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def env_name(field: str) -> str:
    """The environment variable that sets ``field`` (for error messages)."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        return str(first)
    return f"FTBRIDGE_{field.upper()}"


def _field_of(loc: tuple[int | str, ...]) -> str:
    head = str(loc[0]) if loc else "?"
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = (
            {name, *(str(c).lower() for c in alias.choices)}
            if isinstance(alias, AliasChoices)
            else {name}
        )
        if head.lower() in names:
            return name
    return head


_SECRET_FIELDS = frozenset(
    {
        "openai_api_key",
        "wandb_api_key",
        "webhook_secret",
        "chat_urls",
        "webhooks",
        "chats",
        "sources",
    }
)


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = _field_of(first["loc"])
    extra = f" ({len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    if field not in Settings.model_fields:
        return f"unknown setting {field!r}{source}: not a setting ftbridge knows{extra}"
    shown = "" if field in _SECRET_FIELDS else f" (got {first.get('input')!r})"
    return f"invalid setting {env_name(field)}{source}: {first['msg']}{shown}{extra}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise :class:`ConfigError` with one clear line."""
    path = config_file or (Path(os.environ[_CONFIG_ENV]) if os.environ.get(_CONFIG_ENV) else None)
    cls: type[Settings] = Settings
    source = ""
    if path is not None:
        _check_toml(path)
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
        cls = type("FileSettings", (Settings,), {"model_config": config})
        source = f" (from the environment or {path})"
    try:
        return cls(**overrides)
    except ValidationError as error:
        raise ConfigError(_one_line(error, source)) from None


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
