"""``ftbridge check``: is this configuration good to run? One row per check, OK or FAIL with a
reason, and exit code 0 (all fine) or 1.

Checks, in order (a check that needs an earlier one is skipped when that one failed):
configuration, fine-tuning API (one cheap ``jobs.list(limit=1)``), W&B (its key, or "offline"),
W&B directory writable, each webhook and chat target (the SSRF guard resolves webhook hosts),
state store reachable and writable. Nothing secret is printed: reasons are the bridge's own
one-line errors, and every known secret value is blanked from the output besides.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import httpx
import openai
import sqlalchemy as sa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge import schema
from bridge.errors import BridgeError
from bridge.logs import SecretRedactor
from bridge.notify import targets_of
from bridge.settings import Settings, load_settings
from bridge.sources.openai import translate
from bridge.store import SqlStore
from bridge.webhooks import ChatTarget, Targets, check_url
from bridge.webhooks.egress import chat_host
from bridge.webhooks.ssrf import Resolver, system_resolver

Outcome = Literal["OK", "FAIL", "SKIP"]
API_CHECK_TIMEOUT = 15.0


@dataclass(frozen=True)
class Row:
    check: str
    outcome: Outcome
    detail: str


def ok(check: str, detail: str) -> Row:
    return Row(check, "OK", detail)


def fail(check: str, detail: str) -> Row:
    return Row(check, "FAIL", detail)


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# The checks
def check_api(settings: Settings) -> Row:
    name = "fine-tuning API"
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        return fail(name, "OPENAI_API_KEY is not set")
    where = settings.openai_base_url or "https://api.openai.com/v1"
    client = openai.OpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        organization=settings.openai_organization,
        project=settings.openai_project,
        timeout=min(settings.request_timeout, API_CHECK_TIMEOUT),
        max_retries=0,
    )
    try:
        client.fine_tuning.jobs.list(limit=1)
    except openai.OpenAIError as error:
        return fail(name, f"{where}: {translate(error, 'list jobs')}")
    finally:
        client.close()
    return ok(name, f"{where} answers and accepts the key")


def check_wandb(settings: Settings, verify: Callable[[Settings], str] | None = None) -> Row:
    """Offline and disabled modes need nothing; online mode asks W&B who the key is."""
    name = "W&B"
    mode = settings.effective_wandb_mode
    if mode == "disabled":
        return ok(name, "disabled (WANDB_MODE=disabled): no runs are written")
    if mode == "offline":
        return ok(name, "offline: runs are written to disk; upload them later with `wandb sync`")
    if settings.wandb_api_key is None:
        return fail(name, "WANDB_MODE=online needs WANDB_API_KEY")
    try:
        who = (verify or _wandb_viewer)(settings)
    except Exception as error:  # noqa: BLE001 - wandb raises many kinds
        return fail(name, f"{settings.wandb_base_url or 'W&B cloud'}: {_reason(error)}")
    return ok(name, f"online, the key belongs to {who}")


def _wandb_viewer(settings: Settings) -> str:
    import wandb  # noqa: PLC0415 - slow to import; only online mode needs it

    assert settings.wandb_api_key is not None
    overrides = {"base_url": settings.wandb_base_url} if settings.wandb_base_url else {}
    api = wandb.Api(
        api_key=settings.wandb_api_key.get_secret_value(), overrides=overrides, timeout=15
    )
    viewer = api.viewer
    return str(getattr(viewer, "username", None) or getattr(viewer, "entity", None) or "a user")


def check_wandb_dir(settings: Settings) -> Row:
    name = "W&B directory"
    if settings.effective_wandb_mode == "disabled":
        return Row(name, "SKIP", "W&B is disabled")
    directory = (settings.wandb_dir or Path.cwd()) / "wandb"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ftbridge-check-"):
            pass
    except OSError as error:
        return fail(name, f"{directory} is not writable: {error.strerror or error}")
    return ok(name, f"{directory} is writable")


def check_targets(targets: Targets, resolve: Resolver = system_resolver) -> Iterator[Row]:
    if not targets:
        yield Row("webhooks", "SKIP", "no webhook or chat target configured")
        return
    for webhook in targets.webhooks:
        name = f"webhook {webhook.name}"
        host = httpx.URL(webhook.url).host
        try:
            checked = check_url(webhook.url, allow_private=targets.allow_private, resolve=resolve)
        except BridgeError as error:
            yield fail(name, _reason(error))
            continue
        private = " (private addresses allowed)" if targets.allow_private else ""
        yield ok(name, f"{host} resolves to {checked.ip}{private}")
    for chat in targets.chats:
        yield _check_chat(chat, targets.allow_private, resolve)


def _check_chat(chat: ChatTarget, allow_private: bool, resolve: Resolver) -> Row:
    """The host a chat URL names goes through the same SSRF check as a webhook's; a
    service's own host (``slack://TOKEN``) is checked where Apprise connects."""
    name = f"chat {chat.name}"
    host = chat_host(chat.url.get_secret_value())
    if host is None:
        return ok(name, "a valid Apprise URL; its connections pass the SSRF guard when sent")
    shown = f"[{host}]" if ":" in host else host
    try:
        checked = check_url(f"http://{shown}/", allow_private=allow_private, resolve=resolve)
    except BridgeError as error:
        return fail(name, _reason(error))
    private = " (private addresses allowed)" if allow_private else ""
    return ok(name, f"{host} resolves to {checked.ip}{private} (no message is sent)")


def check_store(database_url: str) -> Row:
    """Reachable and writable: a row written and rolled back. A SQLite file not there yet
    is fine when its folder is writable (the first run creates it)."""
    name = "state store"
    shown = sa.make_url(database_url).render_as_string(hide_password=True)
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        if not path.exists():
            folder = path.parent if str(path.parent) else Path()
            if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                return ok(name, f"{shown}: not created yet; {folder.resolve()} is writable")
            return fail(name, f"{shown}: the folder {folder} does not exist or is not writable")
    try:
        store = SqlStore(database_url)
    except BridgeError as error:
        return fail(name, _reason(error))
    try:
        _write_and_roll_back(store.engine)
    except sa.exc.SQLAlchemyError as error:
        return fail(name, f"{shown} is not writable: {_reason(getattr(error, 'orig', error))}")
    finally:
        store.close()
    return ok(name, f"{shown} is reachable and writable")


def _write_and_roll_back(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(
                schema.jobs.insert().values(
                    job_id="ftbridge-check",
                    source="check",
                    status="check",
                    job_json="{}",
                    run_state="pending",
                    synced=True,
                    next_seq=0,
                    status_seq=0,
                    updated_at=time.time(),
                )
            )
        finally:
            transaction.rollback()


# The command
def run_checks(settings: Settings, *, resolve: Resolver = system_resolver) -> list[Row]:
    rows = [ok("configuration", "every setting is valid")]
    try:
        targets: Targets | None = targets_of(settings)
    except BridgeError as error:
        targets = None
        rows.append(fail("webhooks", _reason(error)))
    rows.append(check_api(settings))
    rows.append(check_wandb(settings))
    rows.append(check_wandb_dir(settings))
    if targets is not None:
        rows.extend(check_targets(targets, resolve))
    rows.append(check_store(settings.database_url))
    return rows


def render(rows: list[Row], out: TextIO, secrets: list[str]) -> None:
    redactor = SecretRedactor(secrets)
    table = Table(title="ftbridge check", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    styles = {"OK": "green", "FAIL": "bold red", "SKIP": "dim"}
    for row in rows:
        detail = escape(str(redactor.scrub(row.detail)))
        table.add_row(row.check, f"[{styles[row.outcome]}]{row.outcome}[/]", detail)
    console = Console(file=out, soft_wrap=False, width=max(100, Console(file=out).width))
    console.print(table)
    failed = [r.check for r in rows if r.outcome == "FAIL"]
    if failed:
        console.print(f"{len(failed)} check(s) failed: {', '.join(failed)}", highlight=False)
    else:
        console.print("all checks passed", highlight=False)


def run_check(config_file: Path | None, out: TextIO) -> int:
    """``ftbridge check``: 0 when every check passes, else 1."""
    try:
        settings = load_settings(config_file)
    except BridgeError as error:
        render([fail("configuration", _reason(error))], out, [])
        return 1
    rows = run_checks(settings)
    secrets = settings.secrets()
    with contextlib.suppress(BridgeError):
        secrets += targets_of(settings).secrets()
    render(rows, out, secrets)
    return 1 if any(row.outcome == "FAIL" for row in rows) else 0


__all__ = ["Row", "check_api", "check_store", "check_targets", "check_wandb", "run_check"]
