"""`POST /fine_tuning/jobs` bodies turned into job scenarios (with default timing)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bridge.emulator.errors import ApiError, bad_param
from bridge.emulator.scenario import DEFAULT_GRADERS, JobScenario, MethodType

STEPS_PER_EPOCH = 10


def _require_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise bad_param(
            name, f"Missing required parameter: '{name}'.", code="missing_required_parameter"
        )
    return value


def _method(body: dict[str, Any]) -> tuple[MethodType, dict[str, Any]]:
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in (
        "supervised",
        "dpo",
        "reinforcement",
    ):
        raise bad_param(
            "method.type", "Invalid 'method.type': expected supervised, dpo or reinforcement."
        )
    config = method.get(method["type"]) or {}
    if not isinstance(config, dict):
        raise bad_param(f"method.{method['type']}", "Invalid method configuration.")
    kind: MethodType = method["type"]
    return kind, config


def _hyperparameters(body: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    chosen = config.get("hyperparameters") or body.get("hyperparameters") or {}
    if not isinstance(chosen, dict):
        raise bad_param("hyperparameters", "Invalid 'hyperparameters': expected an object.")
    return {k: v for k, v in chosen.items() if v != "auto"}


def _grader_names(config: dict[str, Any]) -> list[str]:
    grader = config.get("grader")
    if not isinstance(grader, dict):
        return list(DEFAULT_GRADERS)
    if grader.get("type") == "multi" and isinstance(grader.get("graders"), dict):
        return [str(name) for name in grader["graders"]] or list(DEFAULT_GRADERS)
    return [str(grader.get("name") or "grader")]


def _integrations(body: dict[str, Any]) -> list[dict[str, Any]]:
    integrations = body.get("integrations") or []
    for item in integrations:
        wandb = item.get("wandb") if isinstance(item, dict) else None
        if not isinstance(wandb, dict) or item.get("type") != "wandb" or "project" not in wandb:
            raise bad_param(
                "integrations",
                "Invalid 'integrations': expected {type: 'wandb', wandb: {project}}.",
            )
    return list(integrations)


def job_from_request(body: Any) -> JobScenario:
    """The job a create request asks for, or a 400."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = _require_str(body, "model")
    training_file = _require_str(body, "training_file")
    method, config = _method(body)
    chosen = _hyperparameters(body, config)
    n_epochs = chosen.get("n_epochs")
    n_epochs = n_epochs if isinstance(n_epochs, int) else 3
    batch_size = chosen.get("batch_size")
    try:
        return JobScenario(
            model=model,
            method=method,
            n_epochs=n_epochs,
            n_steps=n_epochs * STEPS_PER_EPOCH,
            batch_size=batch_size if isinstance(batch_size, int) else 4,
            training_file=training_file,
            validation_file=body.get("validation_file"),
            suffix=body.get("suffix"),
            seed=body.get("seed"),
            metadata=body.get("metadata") or {},
            integrations=_integrations(body),
            graders=_grader_names(config) if method == "reinforcement" else list(DEFAULT_GRADERS),
            hyperparameters=chosen,
        )
    except ValidationError as error:
        raise ApiError(400, f"Invalid request: {error}") from None
