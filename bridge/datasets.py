"""Training and validation files as W&B dataset artifacts with a sample table.

A fine-tuning file is JSONL, one example a line, shaped by the job's method as OpenAI's
fine-tuning guides document it:

- supervised: ``{"messages": [...], "tools": [...], "parallel_tool_calls": bool}``; content is a
  string or a list of parts (text, image_url, input_audio, file, ...); assistant messages may
  carry ``tool_calls`` (several at once when calls run in parallel) and ``weight`` 0 or 1.
- dpo: ``{"input": {"messages": [...], "tools": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}``.
- reinforcement: ``{"messages": [...], ...}`` plus any extra fields the graders read
  (``reference_answer``, ...).

:func:`sample_table` is pure and never raises: a line that is not a JSON object, or lacks the
fields its method needs, is counted in ``bad_lines`` and left out. (wandb's ``WandbLogger``
asserts three messages per line and reads ``content`` as a string, so it fails on everything
else.) :func:`dataset_artifact` makes the W&B artifact of a file: one per provider and file
id (:func:`artifact_name`), whichever jobs trained on it, logged by the first run that meets
the file and used by the others (see ``Outputs.datasets``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from bridge import mapping
from bridge.mapping import ArtifactSpec, RunSpec

Cell = str | int | float | bool | None
"""What a table cell holds: structured values are rendered as (JSON-ish) text."""

Role = Literal["training", "validation"]

TRANSCRIPT_LIMIT = 4000
TEXT_LIMIT = 2000
URL_LIMIT = 80
ARGUMENTS_LIMIT = 200
LABEL_LIMIT = 40
NAME_LIMIT = 128

_ELLIPSIS = "…"
_SYSTEM_ROLES = ("system", "developer")
_TOOL_KEYS = ("tools", "functions")
_REQUEST_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
_ARTIFACT_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class DatasetSample:
    """The first valid examples of a file as table rows, with counts over the whole file.

    ``total_lines`` counts non-blank lines; ``bad_lines`` those that were left out.
    """

    columns: list[str]
    rows: list[list[Cell]]
    total_lines: int
    bad_lines: int
    stats: dict[str, float | int]


@dataclass(frozen=True)
class _Example:
    """One valid line: the messages shown as its prompt or conversation, and its outputs."""

    obj: dict[str, Any]
    line: str
    messages: list[Any]
    outputs: tuple[list[Any], ...] = ()
    defines_tools: bool = False


@dataclass(frozen=True)
class _Facts:
    messages: int
    characters: int
    tool_calls: int
    tools: bool
    images: bool
    weight_0: bool


@dataclass(frozen=True)
class _Method:
    columns: tuple[str, ...]
    parse: Callable[[dict[str, Any], str], _Example | None]
    row: Callable[[_Example, _Facts], list[Cell]]


# -- rendering ---------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, valid UTF-8 (lone surrogates from JSON escapes replaced)."""
    if len(text) > limit:
        text = text[: limit - 1] + _ELLIPSIS
    return text.encode("utf-8", "replace").decode("utf-8")


def _json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return "[unrenderable]"


def _label(value: object) -> str:
    return _clip(value, LABEL_LIMIT) if isinstance(value, str) and value else "?"


def _field(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None


def _part_text(part: object) -> str:
    """One content part: text as is, anything else as a short ``[kind: detail]`` marker."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return _json(part)
    kind = part.get("type", "text" if "text" in part else None)
    if kind is None:
        return _json(part)
    if kind == "text":
        text = part.get("text")
        return text if isinstance(text, str) else _json(text)
    if kind == "image_url":
        image = part.get("image_url")
        url = image if isinstance(image, str) else _field(image, "url")
        return f"[image: {_clip(url, URL_LIMIT)}]" if isinstance(url, str) else "[image]"
    if kind == "input_audio":
        return f"[audio: {_label(_field(part.get('input_audio'), 'format'))}]"
    if kind == "file":
        file = part.get("file")
        return f"[file: {_label(_field(file, 'filename') or _field(file, 'file_id'))}]"
    if kind == "refusal":
        refusal = part.get("refusal")
        return f"[refusal: {refusal if isinstance(refusal, str) else _json(refusal)}]"
    return f"[{_label(kind)}]"


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(_part_text(part) for part in content)
    return _part_text(content)


def _tool_call(call: object) -> str:
    """``[call name(arguments)]``; arguments are a JSON string, or (loosely) an object."""
    kind = _field(call, "type") or "function"
    body = _field(call, kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        body = call if isinstance(call, dict) else {}
    args = body.get("arguments", body.get("input", ""))
    args = args if isinstance(args, str) else _json(args)
    return f"[call {_label(body.get('name'))}({_clip(args, ARGUMENTS_LIMIT)})]"


def _tool_calls(message: object) -> list[object]:
    calls = _field(message, "tool_calls")
    found = list(calls) if isinstance(calls, list) else []
    legacy = _field(message, "function_call")
    return [*found, {"type": "function", "function": legacy}] if isinstance(legacy, dict) else found


def _body(message: object) -> str:
    """A message's text, refusal and tool calls, without its role."""
    if not isinstance(message, dict):
        return _json(message)
    pieces = [_content_text(message.get("content"))]
    if isinstance(message.get("refusal"), str):
        pieces.append(f"[refusal: {message['refusal']}]")
    pieces += [_tool_call(call) for call in _tool_calls(message)]
    return " ".join(piece for piece in pieces if piece)


def _speaker(message: object) -> str:
    """``role`` with what tells its turns apart: a name, a tool call id, weight 0."""
    role = _label(_field(message, "role"))
    details = [
        _label(_field(message, key))
        for key in ("name", "tool_call_id")
        if isinstance(_field(message, key), str)
    ]
    if _is_weight_0(message):
        details.append("weight 0")
    return f"{role} ({', '.join(details)})" if details else role


def _transcript(messages: list[Any]) -> str:
    """``role: text`` a line, each message cut short first so huge content costs little."""
    return _clip(
        "\n".join(f"{_speaker(m)}: {_clip(_body(m), TRANSCRIPT_LIMIT)}" for m in messages),
        TRANSCRIPT_LIMIT,
    )


def _first(messages: list[Any], roles: tuple[str, ...], *, last: bool = False) -> str | None:
    ordered = reversed(messages) if last else iter(messages)
    found = next((m for m in ordered if _field(m, "role") in roles), None)
    return None if found is None else _clip(_body(found), TEXT_LIMIT)


# -- facts and stats ---------------------------------------------------------------------------


def _is_weight_0(message: object) -> bool:
    weight = _field(message, "weight")
    return weight == 0 and not isinstance(weight, bool)


def _has_image(message: object) -> bool:
    content = _field(message, "content")
    parts = content if isinstance(content, list) else []
    return any(_field(part, "type") == "image_url" for part in parts)


def _defines_tools(holder: object) -> bool:
    return any(isinstance(_field(holder, key), list) and _field(holder, key) for key in _TOOL_KEYS)


def _facts(example: _Example) -> _Facts:
    everything = [m for messages in (example.messages, *example.outputs) for m in messages]
    tool_calls = sum(len(_tool_calls(m)) for m in everything)
    return _Facts(
        messages=len(example.messages),
        characters=sum(len(_content_text(_field(m, "content"))) for m in everything),
        tool_calls=tool_calls,
        tools=example.defines_tools or tool_calls > 0,
        images=any(_has_image(m) for m in everything),
        weight_0=any(_is_weight_0(m) for m in everything),
    )


def _stats(facts: list[_Facts]) -> dict[str, float | int]:
    """Counts over every valid example; ``characters`` counts message contents as rendered
    (an image counts as its short marker), outputs of DPO pairs included."""
    examples = len(facts)
    messages = [f.messages for f in facts]
    return {
        "examples": examples,
        "messages_mean": round(sum(messages) / examples, 3) if examples else 0.0,
        "messages_max": max(messages, default=0),
        "characters": sum(f.characters for f in facts),
        "tool_calls": sum(f.tool_calls for f in facts),
        "examples_with_tools": sum(f.tools for f in facts),
        "examples_with_images": sum(f.images for f in facts),
        "examples_with_weight_0": sum(f.weight_0 for f in facts),
    }


# -- methods -----------------------------------------------------------------------------------


def _messages(holder: object) -> list[Any] | None:
    messages = _field(holder, "messages")
    return messages if isinstance(messages, list) and messages else None


def _outputs(value: object) -> list[Any] | None:
    """DPO outputs are a list of assistant messages; one bare message is taken too."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) and value else None


def _parse_chat(obj: dict[str, Any], line: str) -> _Example | None:
    messages = _messages(obj)
    if messages is None:
        return None
    return _Example(obj, line, messages, defines_tools=_defines_tools(obj))


def _parse_dpo(obj: dict[str, Any], line: str) -> _Example | None:
    prompt = obj.get("input")
    messages = _messages(prompt)
    preferred = _outputs(obj.get("preferred_output"))
    non_preferred = _outputs(obj.get("non_preferred_output"))
    if messages is None or preferred is None or non_preferred is None:
        return None
    return _Example(obj, line, messages, (preferred, non_preferred), _defines_tools(prompt))


def _parse_any(obj: dict[str, Any], line: str) -> _Example:
    return _Example(obj, line, _messages(obj) or [], defines_tools=_defines_tools(obj))


def _supervised_row(example: _Example, facts: _Facts) -> list[Cell]:
    messages = example.messages
    return [
        facts.messages,
        _first(messages, _SYSTEM_ROLES),
        _first(messages, ("user",)),
        _first(messages, ("assistant",), last=True),
        facts.tools,
        facts.tool_calls,
        facts.images,
        _transcript(messages),
    ]


def _dpo_row(example: _Example, facts: _Facts) -> list[Cell]:
    preferred, non_preferred = example.outputs
    return [
        _transcript(example.messages),
        _transcript(preferred),
        _transcript(non_preferred),
        facts.tools,
    ]


def _reinforcement_row(example: _Example, facts: _Facts) -> list[Cell]:
    extra = {k: v for k, v in example.obj.items() if k not in _REQUEST_KEYS}
    return [_transcript(example.messages), _clip(_json(extra), TEXT_LIMIT), facts.tools]


def _line_row(example: _Example, facts: _Facts) -> list[Cell]:
    return [_clip(example.line, TRANSCRIPT_LIMIT)]


_METHODS: dict[str, _Method] = {
    "supervised": _Method(
        (
            "n_messages",
            "system",
            "first_user",
            "last_assistant",
            "has_tools",
            "n_tool_calls",
            "has_images",
            "conversation",
        ),
        _parse_chat,
        _supervised_row,
    ),
    "dpo": _Method(("prompt", "preferred", "non_preferred", "has_tools"), _parse_dpo, _dpo_row),
    "reinforcement": _Method(
        ("prompt", "extra_fields", "has_tools"), _parse_chat, _reinforcement_row
    ),
}
_ANY_METHOD = _Method(("line",), _parse_any, _line_row)


# -- the sample --------------------------------------------------------------------------------


def _lines(jsonl: bytes | str) -> Iterator[str]:
    """Non-blank lines, split on ``\\n`` only: JSON strings may hold U+2028 and its kin."""
    text = jsonl.decode("utf-8", "replace") if isinstance(jsonl, bytes) else jsonl
    for line in text.removeprefix("\ufeff").split("\n"):
        if line.strip():
            yield line.strip()


def _object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def sample_table(jsonl: bytes | str, *, method: str, max_rows: int = 100) -> DatasetSample:
    """Rows for the first `max_rows` valid lines of a fine-tuning file; stats over all of it.

    Columns by method: supervised ``n_messages, system, first_user, last_assistant, has_tools,
    n_tool_calls, has_images, conversation``; dpo ``prompt, preferred, non_preferred,
    has_tools``; reinforcement ``prompt, extra_fields, has_tools``; any other method ``line``
    (the raw JSON object), so that new methods still get a sample.
    """
    spec = _METHODS.get(method, _ANY_METHOD)
    rows: list[list[Cell]] = []
    facts: list[_Facts] = []
    total = 0
    for line in _lines(jsonl):
        total += 1
        obj = _object(line)
        example = None if obj is None else spec.parse(obj, line)
        if example is None:
            continue
        facts.append(_facts(example))
        if len(rows) < max_rows:
            rows.append(spec.row(example, facts[-1]))
    return DatasetSample(list(spec.columns), rows, total, total - len(facts), _stats(facts))


# -- the W&B adapter ---------------------------------------------------------------------------


def artifact_name(provider: str, file_id: str) -> str:
    """``<provider>-<file id>``, with characters W&B refuses in a name replaced by ``-``; a
    name that would pass 128 characters keeps its start and a digest of the whole, so that
    two long file ids never share a name."""
    name = _ARTIFACT_NAME_UNSAFE.sub("-", f"{provider}-{file_id}")
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(f"{provider}\0{file_id}".encode()).hexdigest()[:16]
    return f"{name[: NAME_LIMIT - 17]}-{digest}"


def artifact_key(name: str) -> str:
    """The store's artifact key of the run that logged the dataset artifact ``name``."""
    return f"dataset:{name}"


def use_key(name: str) -> str:
    """The store's artifact key of a run that uses the dataset artifact another run logged."""
    return f"uses:dataset:{name}"


def files_of(job: Mapping[str, Any]) -> list[tuple[Role, str]]:
    """The job's training and validation files, by role."""
    roles: tuple[Role, ...] = ("training", "validation")
    return [(role, f) for role in roles if isinstance(f := job.get(f"{role}_file"), str) and f]


def config_fields(job: Mapping[str, Any]) -> dict[str, str]:
    """What a run's config says of its dataset artifacts: ``<role>_file_artifact``, the
    artifact's name (offline, where wandb cannot use artifacts, this is the link)."""
    provider = mapping.provider_of(job)
    return {f"{role}_file_artifact": artifact_name(provider, f) for role, f in files_of(job)}


def annotate(spec: RunSpec, job: Mapping[str, Any]) -> RunSpec:
    """The run spec with its dataset artifacts named in the config."""
    fields = config_fields(job)
    return replace(spec, config={**spec.config, **fields}) if fields else spec


def dataset_artifact(
    *,
    provider: str,
    file_id: str,
    content: bytes,
    method: str,
    max_rows: int = 100,
) -> ArtifactSpec:
    """A ``dataset`` artifact of the file: a sample table, and the file's stats as metadata.
    One per provider and file id, whichever jobs trained on it.

    The file itself is not uploaded: it stays with the provider, under `file_id`.
    """
    sample = sample_table(content, method=method, max_rows=max_rows)
    metadata = {
        "provider": provider,
        "file_id": file_id,
        "method": method,
        "total_lines": sample.total_lines,
        "bad_lines": sample.bad_lines,
        **sample.stats,
    }
    name = artifact_name(provider, file_id)
    return ArtifactSpec(
        key=artifact_key(name),
        name=name,
        type="dataset",
        metadata=metadata,
        tables={"sample": (list(sample.columns), sample.rows)},
        shared=True,
    )
