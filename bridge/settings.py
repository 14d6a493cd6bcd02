"""One settings object, built once at start-up from the environment and an optional TOML file.

The SDKs' own variables (``OPENAI_API_KEY``, ``WANDB_PROJECT``, ...) keep their names and
meaning; the bridge's own settings take the ``FTBRIDGE_`` prefix. In the TOML file every
setting is written by its field name (``poll_interval = 5``, ``wandb_project = "x"``).
The environment wins over the file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from bridge.errors import ConfigError
from bridge.evals.bounds import Bounds, Deadline, MaxTokens, Samples, TokenBudget

_CONFIG_ENV = "FTBRIDGE_CONFIG"


def _sdk(name: str) -> Any:
    """A field read from an SDK's own environment variable (or its field name in TOML)."""
    return Field(default=None, validation_alias=AliasChoices(name, name.lower()))


def _seconds(default: float, *, low: float, high: float, low_inclusive: bool = False) -> Any:
    """A duration: a finite number of seconds within bounds (``inf`` and ``nan`` refused)."""
    if low_inclusive:
        return Field(default=default, ge=low, le=high, allow_inf_nan=False)
    return Field(default=default, gt=low, le=high, allow_inf_nan=False)


#: ``FTBRIDGE_*`` variables that are not settings but are known (no typo warning for them).
_OTHER_VARIABLES = frozenset({"FTBRIDGE_CONFIG"})
_IGNORED_PREFIXES = ("FTBRIDGE_TEST_",)


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
    poll_interval: float = _seconds(10.0, low=0.5, high=3600, low_inclusive=True)
    request_timeout: float = _seconds(20.0, low=0, high=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_max: float = _seconds(300.0, low=1, high=86_400, low_inclusive=True)
    wandb_native_jobs: Literal["skip", "mirror"] = "skip"
    wandb_init_timeout: float = _seconds(60.0, low=0, high=3600)
    wandb_finish_timeout: float = _seconds(10.0, low=0, high=3600)
    wandb_flush_interval: float = _seconds(1.0, low=0, high=60)
    wandb_upload_interval: int = Field(default=2, ge=1, le=300)
    shutdown_timeout: float = _seconds(25.0, low=0, high=3600)
    # A hostile or slow API: pages read per job and cycle, and how long a cycle waits for
    # one job's reads before it goes on without it (the job is finished on a later cycle).
    max_pages: int = Field(default=1_000, ge=1, le=100_000)
    job_time_budget: float = _seconds(15.0, low=0, high=3600)
    webhook_urls: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False
    webhook_timeout: float = _seconds(10.0, low=0, high=120)
    chat_urls: SecretStr | None = None
    notify_backfill: bool = False
    notify_final_wait: float = _seconds(120.0, low=0, high=86400, low_inclusive=True)
    webhooks: list[dict[str, Any]] = Field(default_factory=list)
    chats: list[dict[str, Any]] = Field(default_factory=list)
    # The health server (/healthz, /readyz, /metrics): off unless http_port is set.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    # The status page (GET / on the health port): off unless asked for; a bearer token if set.
    status_page: bool = False
    status_token: SecretStr | None = None
    # Threads reading the API; 0: sized each cycle to the API's latency (up to 64).
    fetch_workers: int = Field(default=0, ge=0, le=128)
    # glibc malloc arenas for the bridge's threads; 0: glibc's default (8 per core).
    malloc_arenas: int = Field(default=2, ge=0, le=64)
    # A soft memory limit for wandb-core in MiB (Go's GOMEMLIMIT; GOMEMLIMIT in the
    # environment wins); 0: none.
    wandb_core_memory_limit: int = Field(default=0, ge=0, le=1_048_576)
    # Processes writing a backfill (sync), each with its own wandb-core; 0: one per core.
    sync_writers: int = Field(default=0, ge=0, le=16)
    lease_seconds: float = _seconds(30.0, low=3, high=600, low_inclusive=True)
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    log_datasets: bool = False
    dataset_sample_rows: int = Field(default=100, ge=1, le=10_000)
    # Base vs fine-tuned samples (a source or route table may set them too: bridge.evals).
    eval_samples: Samples = 0
    eval_max_tokens: MaxTokens = 256
    eval_token_budget: TokenBudget = 100_000
    eval_deadline: Deadline = 120.0
    sources: list[dict[str, Any]] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)
    routes: list[dict[str, Any]] = Field(default_factory=list)
    prices: dict[str, float] = Field(default_factory=dict)

    @field_validator("prices")
    @classmethod
    def _finite_prices(cls, value: dict[str, float]) -> dict[str, float]:
        for model, price in value.items():
            if not 0 <= price < 1e9:  # nan and inf fail this too
                raise ValueError(f"the price of {model!r} must be a finite number >= 0")
        return value

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

    @property
    def eval_bounds(self) -> Bounds:
        """The global bounds of the samples (``FTBRIDGE_EVAL_*``)."""
        return Bounds(
            self.eval_samples, self.eval_max_tokens, self.eval_token_budget, self.eval_deadline
        )

    def secrets(self) -> list[str]:
        """The secret values, for the log redactor."""
        found = [self.openai_api_key, self.wandb_api_key, self.webhook_secret, self.chat_urls]
        found.append(self.status_token)
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
        "status_token",
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
    except SettingsError as error:  # a JSON-valued variable that is not JSON
        raise ConfigError(_parse_error(error, source)) from None


def _parse_error(error: SettingsError, source: str) -> str:
    found = re.search(r'field "([^"]+)"', str(error))
    field = found.group(1) if found else "?"
    return f"invalid setting {env_name(field)}{source}: not valid JSON (a JSON list or object)"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``FTBRIDGE_*`` variable that is no setting (a typo, most likely), naming
    the closest known one."""
    known = {env_name(name) for name in Settings.model_fields} | _OTHER_VARIABLES
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("FTBRIDGE_") or upper in known:
            continue
        if upper.startswith(_IGNORED_PREFIXES):
            continue
        # Compared without the prefix, which every name shares.
        tails = {k.removeprefix("FTBRIDGE_"): k for k in known if k.startswith("FTBRIDGE_")}
        close = difflib.get_close_matches(upper.removeprefix("FTBRIDGE_"), sorted(tails), n=1)
        hint = f"; did you mean {tails[close[0]]}?" if close else ""
        lines.append(f"{name} is not a setting ftbridge knows (ignored){hint}")
    return lines


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}): TOML files are UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
