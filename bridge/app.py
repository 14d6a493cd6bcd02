"""Wiring: settings in, a ready ``Bridge`` out."""

from __future__ import annotations

from pathlib import Path

import structlog

from bridge import mapping
from bridge.engine import Bridge
from bridge.errors import ConfigError
from bridge.mapping import WandbDefaults
from bridge.notify import OutboxWriter, dispatcher_for, targets_of
from bridge.settings import Settings
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.source_openai import OpenAISource
from bridge.store import SqlStore

log = structlog.get_logger(__name__)


def wandb_options(settings: Settings) -> WandbOptions:
    mode = settings.effective_wandb_mode
    return WandbOptions(
        mode=mode,
        directory=settings.wandb_dir or Path.cwd(),
        api_key=settings.wandb_api_key.get_secret_value() if settings.wandb_api_key else None,
        base_url=settings.wandb_base_url,
        init_timeout=settings.wandb_init_timeout,
        finish_timeout=settings.wandb_finish_timeout,
        flush_interval=settings.wandb_flush_interval,
    )


def build_bridge(settings: Settings) -> Bridge:
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ConfigError("OPENAI_API_KEY is not set (or run `ftbridge demo` to try it without)")
    source = OpenAISource.create(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        organization=settings.openai_organization,
        project=settings.openai_project,
    )
    options = wandb_options(settings)
    if options.mode == "offline" and settings.wandb_mode is None:
        log.warning(
            "wandb.offline",
            detail="WANDB_API_KEY is not set: runs are written offline (upload: wandb sync)",
            directory=str(options.directory / "wandb"),
        )
    targets = targets_of(settings)
    store = SqlStore(
        settings.database_url,
        on_change=OutboxWriter(targets, settings.notify_backfill, source.name) if targets else None,
    )
    defaults = WandbDefaults(
        project=settings.wandb_project,
        entity=settings.wandb_entity,
        app_url=mapping.app_url(settings.wandb_base_url),
    )
    bridge = Bridge(source, WandbSink(options), store, defaults, settings.wandb_native_jobs)
    bridge.dispatcher = dispatcher_for(store.engine, targets, settings)
    return bridge
