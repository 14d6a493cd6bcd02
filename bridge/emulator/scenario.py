"""What the emulator plays: jobs and their timelines, loaded from JSON or TOML."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MethodType = Literal["supervised", "dpo", "reinforcement"]
Outcome = Literal["succeeded", "failed", "cancelled"]
HyperValue = int | float | str

DEFAULT_GRADERS = ["exact_match", "format_check"]


class JobScenario(BaseModel):
    """One fine-tuning job and how it unfolds over emulated time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    # Whose API serves the job: OpenAI's paths (also Azure's), or another provider's
    # (``bridge.emulator.providers``); each API lists only its own jobs.
    provider: Literal["openai", "together", "fireworks"] = "openai"
    model: str = "gpt-4o-mini-2024-07-18"
    method: MethodType = "supervised"
    n_steps: int = Field(default=30, ge=1)
    n_epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=4, ge=1)
    step_seconds: float = Field(default=1.0, gt=0)
    created_offset: float = 0.0
    validate_seconds: float = Field(default=2.0, ge=0)
    queue_seconds: float = Field(default=2.0, ge=0)
    finalize_seconds: float = Field(default=2.0, ge=0)
    outcome: Outcome = "succeeded"
    fail_at_step: int | None = Field(default=None, ge=0)
    cancel_at_step: int | None = Field(default=None, ge=0)
    error_code: str | None = None
    error_message: str | None = None
    pause_at_step: int | None = Field(default=None, ge=1)
    pause_seconds: float = Field(default=5.0, ge=0)
    with_validation_file: bool = False
    training_file: str | None = None
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    azure: bool = False
    result_csv_base64: bool = False
    # Steps whose metrics event the API never lists (the result file still has them).
    events_missing_steps: list[int] = Field(default_factory=list)
    graders: list[str] = Field(default_factory=lambda: list(DEFAULT_GRADERS), min_length=1)
    hyperparameters: dict[str, HyperValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        if self.n_epochs > self.n_steps:
            raise ValueError(f"n_epochs ({self.n_epochs}) exceeds n_steps ({self.n_steps})")
        for name in ("fail_at_step", "cancel_at_step", "pause_at_step"):
            step = getattr(self, name)
            if step is not None and step > self.n_steps:
                raise ValueError(f"{name} ({step}) exceeds n_steps ({self.n_steps})")
        if self.fail_at_step is not None and self.outcome != "failed":
            raise ValueError("fail_at_step needs outcome 'failed'")
        if self.cancel_at_step is not None and self.outcome != "cancelled":
            raise ValueError("cancel_at_step needs outcome 'cancelled'")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether the job trains with a validation file."""
        return self.with_validation_file or self.validation_file is not None


class Scenario(BaseModel):
    """A whole emulated account: its jobs, its seed and how fast time runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    time_scale: float = Field(default=1.0, ge=0)
    start_time: float | None = None
    organization_id: str = "org-emulator0000000000000000"
    organization_name: str = "emulator"
    # The one Fireworks account whose jobs the Fireworks API serves.
    fireworks_account_id: str = "emulator"
    jobs: list[JobScenario] = Field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario from a `.json` or `.toml` file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return cls.model_validate(data)

    @classmethod
    def demo(cls) -> Scenario:
        """The built-in demo scenario (`demo.json`), finished in about a minute."""
        text = resources.files(__package__).joinpath("demo.json").read_text(encoding="utf-8")
        return cls.model_validate_json(text)
