"""Target configuration and filters."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.ports import StatusChange
from bridge.webhooks import WebhookEvent, status_event, targets_from_settings
from tests.factories import job
from tests.webhook_receiver import NEW_SECRET, SECRET

BAD_SECRET = "whsec_this-is-not-base64!!"


def event(status: str = "succeeded", **extra: Any) -> WebhookEvent:
    change = StatusChange("ftjob-1", "running", status, job(status=status, **extra))
    return status_event(change, seq=1, run_url=None, created_at=1)


def test_env_urls_share_the_env_secrets() -> None:
    targets = targets_from_settings(
        ["https://a.example/hook, https://b.example/hook"], f"{NEW_SECRET},{SECRET}"
    )
    assert [t.name for t in targets.webhooks] == ["env-1", "env-2"]
    assert targets.webhooks[0].secret_values() == [NEW_SECRET, SECRET]
    assert SECRET in targets.secrets()


def test_toml_tables_and_chat_urls() -> None:
    targets = targets_from_settings(
        [],
        None,
        [
            {
                "name": "ops",
                "url": "https://ops.example/hook",
                "secret": SECRET,
                "event_types": ["fine_tuning.job.failed"],
            }
        ],
        ["json://chat.example/notify"],
        toml_chats=[{"name": "pager", "url": "json://pager.example/", "models": ["gpt-4o*"]}],
    )
    assert targets.get("ops") is not None
    assert [c.name for c in targets.chats] == ["chat-1", "pager"]
    assert "json://chat.example/notify" in targets.secrets()
    assert "json://chat.example" not in repr(targets)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"webhook_urls": ["https://a.example/h"]},
            "webhook target 'env-1': no secret; set FTBRIDGE_WEBHOOK_SECRET",
        ),
        (
            {"webhook_urls": ["https://a.example/h"], "webhook_secret": BAD_SECRET},
            "webhook target 'env-1': secrets: secret must be 'whsec_' followed by",
        ),
        (
            {"webhook_urls": ["ftp://a.example/h"], "webhook_secret": SECRET},
            "webhook target 'env-1': url: url must be http(s)",
        ),
        (
            {
                "toml_targets": [
                    {"name": "ops", "url": "https://a.example", "secret": SECRET, "colour": "red"}
                ]
            },
            "webhook target 'ops': unknown key 'colour'",
        ),
        (
            {"toml_targets": [{"name": "ops", "secret": SECRET}]},
            "webhook target 'ops': url is required",
        ),
        (
            {"toml_targets": [{"name": "ops", "url": "not a url", "secret": BAD_SECRET}]},
            "webhook target 'ops': url: url must be http(s)",
        ),
        (
            {"toml_targets": [{"name": "ops", "url": "https://u:p@a.example/", "secret": SECRET}]},
            "webhook target 'ops': url: url must not carry a user",
        ),
        (
            {"webhook_urls": ["http://169.254.169.254/latest"], "webhook_secret": SECRET},
            "webhook target 'env-1': 169.254.169.254 is not public (link-local)",
        ),
        ({"chat_urls": ["nosuchscheme://token@x"]}, "chat target 'chat-1': url: url is not an"),
        (
            {
                "webhook_urls": ["https://a.example/h"],
                "webhook_secret": SECRET,
                "toml_targets": [{"name": "env-1", "url": "https://b.example", "secret": SECRET}],
            },
            "webhook target 'env-1': the name is used twice",
        ),
    ],
)
def test_bad_config_names_the_target_and_hides_the_secret(
    kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        targets_from_settings(**kwargs)
    message = str(raised.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    for secret in (SECRET, BAD_SECRET, "this-is-not-base64", "token@x"):
        assert secret not in message


def test_private_literal_addresses_are_fine_when_allowed() -> None:
    targets = targets_from_settings(["http://127.0.0.1:9/h"], SECRET, allow_private=True)
    assert targets.allow_private


def test_filters() -> None:
    targets = targets_from_settings(
        [],
        None,
        [
            {"name": "all", "url": "https://a.example", "secret": SECRET},
            {
                "name": "done",
                "url": "https://a.example",
                "secret": SECRET,
                "event_types": ["fine_tuning.job.succeeded", "fine_tuning.job.failed"],
            },
            {
                "name": "glob",
                "url": "https://a.example",
                "secret": SECRET,
                "event_types": ["fine_tuning.job.*"],
            },
            {
                "name": "team-a",
                "url": "https://a.example",
                "secret": SECRET,
                "metadata": {"team": "a", "env": "prod"},
            },
            {
                "name": "mini",
                "url": "https://a.example",
                "secret": SECRET,
                "models": ["gpt-4o-mini*"],
            },
            {"name": "off", "url": "https://a.example", "secret": SECRET, "enabled": False},
        ],
    )

    def names(e: WebhookEvent) -> set[str]:
        return {t.name for t in targets.matching(e)}

    assert names(event("running")) == {"all", "glob", "mini"}
    assert names(event("succeeded", metadata={"team": "a", "env": "prod"})) == {
        "all",
        "done",
        "glob",
        "team-a",
        "mini",
    }
    assert "team-a" not in names(event("failed", metadata={"team": "a"}))
    assert "mini" not in names(event("succeeded", model="gpt-4.1-2025-04-14"))
