"""Notifications wiring: the webhook and chat targets from the settings, the store's change
hook that writes the outbox, and the dispatcher that delivers it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from bridge.ports import StatusChange
from bridge.settings import Settings
from bridge.webhooks import Dispatcher, Targets, enqueue_change, targets_from_settings
from bridge.webhooks.outbox import FINAL_WAIT, release


def targets_of(settings: Settings) -> Targets:
    """Validated targets; a bad one raises :class:`bridge.errors.ConfigError`."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    chats = settings.chat_urls.get_secret_value() if settings.chat_urls else ""
    return targets_from_settings(
        [settings.webhook_urls or ""],
        secret,
        settings.webhooks,
        [chats],
        settings.webhook_allow_private,
        toml_chats=settings.chats,
    )


@dataclass(frozen=True)
class OutboxWriter:
    """The store's change hook: one outbox event per status change, in its transaction."""

    targets: Targets
    notify_backfill: bool
    final_wait: float = FINAL_WAIT

    def __call__(self, conn: Connection, change: StatusChange) -> None:
        enqueue_change(
            conn,
            change,
            self.targets,
            seq=change.seq,
            run_url=change.run_url,
            notify_backfill=self.notify_backfill,
            source=change.source,
            final_wait=self.final_wait,
        )


def release_notifications(engine: Engine, job_id: str) -> None:
    """The engine's ``on_final``: the job's run is final, its held notifications go out."""
    release(engine, job_id, final=True)


def dispatcher_for(
    engine: Engine, targets: Targets, settings: Settings, owner: str | None = None
) -> Dispatcher | None:
    if not targets:
        return None
    return Dispatcher(
        engine,
        targets,
        timeout=settings.webhook_timeout,
        owner=owner,
        owner_ttl=settings.lease_seconds,
    )
