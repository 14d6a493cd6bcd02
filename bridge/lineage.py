"""Lineage, pure: which fine-tuned model (or checkpoint of one) a job started from, what its
run says of it, and which artifact of the parent's run it uses.

A job's base model names its parent when it is the ``fine_tuned_model`` of a job the bridge
knows (any source), or a checkpoint of one: OpenAI's ``<fine-tuned model>:ckpt-step-N``
(Azure's ``<fine-tuned model>-ckpt-step-N``). The parent's run then has a ``<job>-model``
artifact (alias ``latest``) and, for a checkpoint, a ``<job>-checkpoint`` artifact with alias
``step-N`` (see :func:`bridge.mapping.model_artifact`, :func:`bridge.mapping.checkpoint_artifact`).
No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bridge import mapping
from bridge.mapping import RunSpec

_CHECKPOINT = re.compile(r"^(?P<model>.+?)[:-]ckpt-step-(?P<step>\d{1,12})$")


@dataclass(frozen=True)
class Parent:
    """The job a job was fine-tuned from: its id, its provider, the model as the child names
    it, and the checkpoint's step when the child started from a checkpoint."""

    job_id: str
    provider: str
    model: str
    step: int | None = None

    @property
    def artifact(self) -> str:
        """The parent run's artifact the child uses, as ``name:alias``."""
        if self.step is not None:
            return f"{mapping.checkpoint_artifact_name(self.job_id)}:step-{self.step}"
        return f"{mapping.model_artifact_name(self.job_id)}:latest"


def model_and_step(base_model: object) -> tuple[str, int | None] | None:
    """The fine-tuned model a base model names, and the checkpoint step if it names one."""
    if not isinstance(base_model, str) or not base_model:
        return None
    found = _CHECKPOINT.match(base_model)
    if found:
        return found["model"], int(found["step"])
    return base_model, None


class ModelIndex:
    """Fine-tuned models of known jobs (model -> job id, provider), and the jobs started from
    each (model -> child job ids)."""

    def __init__(self, jobs: Iterable[Mapping[str, Any]] = ()) -> None:
        self.models: dict[str, tuple[str, str]] = {}
        self.children: dict[str, set[str]] = {}
        for job in jobs:
            self.add(job)

    def add(self, job: Mapping[str, Any]) -> bool:
        """Index a job; True when it brings a fine-tuned model not indexed before."""
        job_id = str(job.get("id"))
        named = model_and_step(job.get("model"))
        if named is not None:
            self.children.setdefault(named[0], set()).add(job_id)
        model = job.get("fine_tuned_model")
        if not isinstance(model, str) or not model or model in self.models:
            return False
        self.models[model] = (job_id, mapping.provider_of(job))
        return True

    def parent_of(self, job: Mapping[str, Any]) -> Parent | None:
        named = model_and_step(job.get("model"))
        if named is None:
            return None
        model, step = named
        found = self.models.get(model)
        if found is None and step is not None:
            # A fine-tuned model whose own name ends like a checkpoint's.
            found, step = self.models.get(str(job.get("model"))), None
        if found is None or found[0] == str(job.get("id")):
            return None
        return Parent(job_id=found[0], provider=found[1], model=str(job.get("model")), step=step)

    def children_of(self, model: str) -> set[str]:
        return set(self.children.get(model, ()))


def fields(parent: Parent) -> dict[str, Any]:
    """What the child's config and summary say of its parent."""
    return {"parent_job_id": parent.job_id, "parent_model": parent.model}


def tag(parent: Parent) -> str:
    return f"{parent.provider}/parent/{parent.job_id}"[: mapping.MAX_TAG_LENGTH]


def annotate(spec: RunSpec, parent: Parent | None) -> RunSpec:
    """The child's run spec with its parent in the config and the tags."""
    if parent is None:
        return spec
    return replace(
        spec,
        config={**spec.config, **fields(parent)},
        tags=mapping.clean_tags([*spec.tags, tag(parent)]),
    )


def artifact_path(parent: Parent, parent_spec: RunSpec) -> str:
    """``<entity>/<project>/<artifact>:<alias>`` of the parent's artifact."""
    return mapping.artifact_path(parent_spec, parent.artifact)


def link_key(parent: Parent) -> str:
    """The store's artifact key saying the child's run carries its link to the parent."""
    return f"parent:{parent.job_id}:{parent.step if parent.step is not None else 'model'}"
