"""Fine-tuning files as sample tables (pure), and as dataset artifacts of a real offline run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.datasets import (
    ARGUMENTS_LIMIT,
    TEXT_LIMIT,
    TRANSCRIPT_LIMIT,
    URL_LIMIT,
    DatasetSample,
    artifact_name,
    dataset_artifact,
    sample_table,
)
from bridge.mapping import RunSpec
from bridge.sink_wandb import WandbOptions, WandbSink
from bridge.wandbfile import wait_for_exit

SUPERVISED_COLUMNS = [
    "n_messages",
    "system",
    "first_user",
    "last_assistant",
    "has_tools",
    "n_tool_calls",
    "has_images",
    "conversation",
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def jsonl(*lines: object) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)


def chat(*messages: object, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any = None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def only_row(sample: DatasetSample) -> dict[str, Any]:
    (row,) = sample.rows
    return dict(zip(sample.columns, row, strict=True))


def supervised(*lines: object) -> DatasetSample:
    return sample_table(jsonl(*lines), method="supervised")


# -- supervised --------------------------------------------------------------------------------


def test_three_message_chat() -> None:
    line = chat({"role": "system", "content": "You are terse."}, user("Hi?"), assistant("Hello."))
    sample = supervised(line)
    assert sample.columns == SUPERVISED_COLUMNS
    assert only_row(sample) == {
        "n_messages": 3,
        "system": "You are terse.",
        "first_user": "Hi?",
        "last_assistant": "Hello.",
        "has_tools": False,
        "n_tool_calls": 0,
        "has_images": False,
        "conversation": "system: You are terse.\nuser: Hi?\nassistant: Hello.",
    }
    assert (sample.total_lines, sample.bad_lines) == (1, 0)
    assert sample.stats == {
        "examples": 1,
        "messages_mean": 3.0,
        "messages_max": 3,
        "characters": len("You are terse.Hi?Hello."),
        "tool_calls": 0,
        "examples_with_tools": 0,
        "examples_with_images": 0,
        "examples_with_weight_0": 0,
    }


def test_multi_turn_with_a_system_prompt_keeps_every_turn_in_order() -> None:
    line = chat(
        {"role": "system", "content": "Sys"},
        user("one"),
        assistant("two"),
        user("three"),
        assistant("four"),
    )
    row = only_row(supervised(line))
    assert row["n_messages"] == 5
    assert (row["system"], row["first_user"], row["last_assistant"]) == ("Sys", "one", "four")
    assert row["conversation"] == (
        "system: Sys\nuser: one\nassistant: two\nuser: three\nassistant: four"
    )


def test_developer_role_counts_as_system_and_missing_roles_are_none() -> None:
    row = only_row(supervised(chat({"role": "developer", "content": "Dev"}, user("q"))))
    assert row["system"] == "Dev"
    assert row["last_assistant"] is None
    row = only_row(supervised(chat(user("q"), assistant("a"))))
    assert row["system"] is None


def test_tool_definitions_calls_and_tool_replies() -> None:
    line = chat(
        user("Weather in Paris?"),
        assistant(tool_calls=[call("call_1", "get_weather", '{"city": "Paris"}')]),
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        assistant("21 degrees."),
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
    )
    sample = supervised(line)
    row = only_row(sample)
    assert (row["has_tools"], row["n_tool_calls"]) == (True, 1)
    assert row["conversation"] == (
        "user: Weather in Paris?\n"
        'assistant: [call get_weather({"city": "Paris"})]\n'
        'tool (call_1): {"temp": 21}\n'
        "assistant: 21 degrees."
    )
    assert sample.stats["tool_calls"] == 1
    assert sample.stats["examples_with_tools"] == 1


def test_parallel_tool_calls_are_all_rendered_and_counted() -> None:
    calls = [call("a", "get_weather", '{"city":"Oslo"}'), call("b", "get_time", {"tz": "CET"})]
    line = chat(
        user("Oslo?"),
        assistant("Checking.", tool_calls=calls),
        {"role": "tool", "tool_call_id": "a", "content": "cold"},
        {"role": "tool", "tool_call_id": "b", "content": "noon"},
        tools=[WEATHER_TOOL],
        parallel_tool_calls=True,
    )
    row = only_row(supervised(line))
    assert row["n_tool_calls"] == 2
    assert (
        'assistant: Checking. [call get_weather({"city":"Oslo"})] [call get_time({"tz": "CET"})]'
        in row["conversation"]
    )
    assert "tool (a): cold\ntool (b): noon" in row["conversation"]


def test_tool_calls_without_tool_definitions_still_count_as_tools() -> None:
    row = only_row(supervised(chat(user("x"), assistant(tool_calls=[call("c", "f", "{}")]))))
    assert (row["has_tools"], row["n_tool_calls"]) == (True, 1)


def test_legacy_functions_and_function_call() -> None:
    line = chat(
        user("x"),
        assistant(function_call={"name": "lookup", "arguments": '{"q": 1}'}),
        {"role": "function", "name": "lookup", "content": "found"},
        functions=[{"name": "lookup"}],
    )
    row = only_row(supervised(line))
    assert (row["has_tools"], row["n_tool_calls"]) == (True, 1)
    assert 'assistant: [call lookup({"q": 1})]\nfunction (lookup): found' in row["conversation"]


def test_long_tool_arguments_are_cut() -> None:
    args = json.dumps({"text": "y" * 1000})
    row = only_row(supervised(chat(user("x"), assistant(tool_calls=[call("c", "f", args)]))))
    rendered = row["last_assistant"]
    assert rendered.startswith("[call f(") and rendered.endswith("…)]")
    assert len(rendered) == len("[call f()]") + ARGUMENTS_LIMIT


def test_image_parts_are_shown_as_markers_with_a_short_url() -> None:
    data_url = "data:image/jpeg;base64," + "Q" * 50_000
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    sample = supervised(chat(user(content), assistant("A cat.")))
    row = only_row(sample)
    assert row["has_images"] is True
    first = row["first_user"]
    assert first.startswith("What is in this image? [image: data:image/jpeg;base64,QQQ")
    assert first.endswith(" [image: https://example.com/cat.png]")
    marker = first.split(" [image: ")[1]
    assert len(marker) == URL_LIMIT + 1  # the url cut to URL_LIMIT, then "]"
    assert sample.stats["examples_with_images"] == 1


def test_every_kind_of_content_part() -> None:
    content = [
        {"type": "text", "text": "hear"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_id": "file-2"}},
        {"type": "refusal", "refusal": "no"},
        {"type": "image_url", "image_url": "https://example.com/x.png"},
        {"type": "video_frame", "frame": 3},
        {"text": "untyped text"},
        {"type": 7},
        "a bare string",
        42,
    ]
    row = only_row(supervised(chat(user(content))))
    assert row["first_user"] == (
        "hear [audio: wav] [file: a.pdf] [file: file-2] [refusal: no]"
        " [image: https://example.com/x.png] [video_frame] untyped text [?] a bare string 42"
    )


def test_assistant_refusal_field_is_shown() -> None:
    row = only_row(supervised(chat(user("x"), assistant(refusal="I can't help with that."))))
    assert row["last_assistant"] == "[refusal: I can't help with that.]"


def test_assistant_weight_0_is_marked_and_counted() -> None:
    line = chat(
        user("a"),
        assistant("wrong", weight=0),
        user("again"),
        assistant("right", weight=1),
    )
    sample = supervised(line, chat(user("b"), assistant("ok", weight=1)))
    conversation = sample.rows[0][-1]
    assert isinstance(conversation, str)
    assert "assistant (weight 0): wrong\nuser: again\nassistant: right" in conversation
    assert sample.stats["examples_with_weight_0"] == 1
    assert (sample.stats["messages_mean"], sample.stats["messages_max"]) == (3.0, 4)


def test_weight_false_is_not_weight_0() -> None:
    sample = supervised(chat(user("a"), assistant("b", weight=False)))
    assert sample.stats["examples_with_weight_0"] == 0


def test_names_are_shown_with_the_role() -> None:
    row = only_row(supervised(chat({"role": "user", "name": "ann", "content": "hi"})))
    assert row["conversation"] == "user (ann): hi"


def test_odd_messages_render_without_raising() -> None:
    line = chat("just text", {"content": "no role"}, {"role": 3, "content": {"k": "v"}}, None)
    row = only_row(supervised(line))
    assert row["n_messages"] == 4
    assert row["conversation"] == '?: "just text"\n?: no role\n?: {"k": "v"}\n?: null'


# -- dpo ---------------------------------------------------------------------------------------


def dpo_line(**input_extra: Any) -> dict[str, Any]:
    return {
        "input": {"messages": [user("How cold is SF?")], **input_extra},
        "preferred_output": [assistant("About 15 C, bring a jacket.")],
        "non_preferred_output": [assistant("Cold.")],
    }


def test_dpo_pair() -> None:
    sample = sample_table(jsonl(dpo_line()), method="dpo")
    assert sample.columns == ["prompt", "preferred", "non_preferred", "has_tools"]
    assert sample.rows == [
        [
            "user: How cold is SF?",
            "assistant: About 15 C, bring a jacket.",
            "assistant: Cold.",
            False,
        ]
    ]
    assert sample.stats["examples"] == 1
    assert sample.stats["messages_mean"] == 1.0
    assert sample.stats["characters"] == len("How cold is SF?About 15 C, bring a jacket.Cold.")


def test_dpo_pair_with_tools() -> None:
    line = dpo_line(tools=[WEATHER_TOOL], parallel_tool_calls=True)
    line["preferred_output"] = [assistant(tool_calls=[call("c", "get_weather", '{"city":"SF"}')])]
    sample = sample_table(jsonl(line, dpo_line()), method="dpo")
    assert sample.rows[0][1] == 'assistant: [call get_weather({"city":"SF"})]'
    assert [row[3] for row in sample.rows] == [True, False]
    assert sample.stats["examples_with_tools"] == 1
    assert sample.stats["tool_calls"] == 1


def test_dpo_single_message_outputs_are_accepted() -> None:
    line = dpo_line()
    line["preferred_output"] = assistant("yes")
    assert sample_table(jsonl(line), method="dpo").rows[0][1] == "assistant: yes"


@pytest.mark.parametrize(
    "broken",
    [
        {"preferred_output": [assistant("a")], "non_preferred_output": [assistant("b")]},
        {"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},
        {"input": "text", "preferred_output": [assistant("a")], "non_preferred_output": []},
        {"input": {"messages": [user("q")]}, "preferred_output": [assistant("a")]},
        chat(user("q"), assistant("a")),
    ],
)
def test_dpo_lines_without_the_pair_are_bad(broken: dict[str, Any]) -> None:
    sample = sample_table(jsonl(broken, dpo_line()), method="dpo")
    assert (sample.total_lines, sample.bad_lines, len(sample.rows)) == (2, 1, 1)


# -- reinforcement -----------------------------------------------------------------------------


def test_rft_item_with_extra_fields() -> None:
    line = chat(
        {"role": "developer", "content": "Answer with a number."},
        user("2 + 2?"),
        reference_answer="4",
        difficulty={"level": 1, "tags": ["math"]},
    )
    sample = sample_table(jsonl(line), method="reinforcement")
    assert sample.columns == ["prompt", "extra_fields", "has_tools"]
    prompt, extra, has_tools = sample.rows[0]
    assert prompt == "developer: Answer with a number.\nuser: 2 + 2?"
    assert isinstance(extra, str)
    assert json.loads(extra) == {
        "reference_answer": "4",
        "difficulty": {"level": 1, "tags": ["math"]},
    }
    assert has_tools is False


def test_rft_tools_are_not_extra_fields() -> None:
    line = chat(user("q"), tools=[WEATHER_TOOL], parallel_tool_calls=False, expected="x")
    sample = sample_table(jsonl(line), method="reinforcement")
    assert sample.rows == [["user: q", '{"expected": "x"}', True]]


def test_rft_item_without_extra_fields() -> None:
    sample = sample_table(jsonl(chat(user("q"))), method="reinforcement")
    assert sample.rows == [["user: q", "{}", False]]


def test_rft_huge_extra_fields_are_cut() -> None:
    line = chat(user("q"), reference_answer="z" * 10_000)
    extra = sample_table(jsonl(line), method="reinforcement").rows[0][1]
    assert isinstance(extra, str)
    assert len(extra) == TEXT_LIMIT and extra.endswith("…")


# -- unknown methods ---------------------------------------------------------------------------


def test_unknown_method_samples_raw_lines() -> None:
    lines = ['{"prompt": "p", "completion": "c"}', '{"messages": [{"role": "user"}]}', "[1, 2]"]
    sample = sample_table("\n".join(lines), method="distillation")
    assert sample.columns == ["line"]
    assert sample.rows == [[lines[0]], [lines[1]]]
    assert (sample.total_lines, sample.bad_lines) == (3, 1)
    assert (sample.stats["examples"], sample.stats["messages_max"]) == (2, 1)


def test_unknown_method_cuts_long_lines() -> None:
    line = json.dumps({"text": "w" * 10_000})
    (row,) = sample_table(line, method="new").rows
    assert isinstance(row[0], str)
    assert len(row[0]) == TRANSCRIPT_LIMIT


# -- bad and odd input -------------------------------------------------------------------------


def test_blank_lines_are_not_counted() -> None:
    text = "\n\n" + jsonl(chat(user("a"))) + "\n   \n\r\n" + jsonl(chat(user("b"))) + "\n"
    sample = supervised(text)
    assert (sample.total_lines, sample.bad_lines, len(sample.rows)) == (2, 0, 2)


def test_crlf_line_endings_and_a_byte_order_mark() -> None:
    data = ("\ufeff" + jsonl(chat(user("a"))) + "\r\n" + jsonl(chat(user("b"))) + "\r\n").encode()
    sample = sample_table(data, method="supervised")
    assert [row[2] for row in sample.rows] == ["a", "b"]


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '{"messages": [',
        "[1, 2, 3]",
        '"a string"',
        "42",
        "null",
        '{"prompt": "p", "completion": "c"}',
        '{"messages": []}',
        '{"messages": "hello"}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_bad_lines_are_counted_and_skipped(bad: str) -> None:
    sample = supervised(bad, chat(user("ok")))
    assert (sample.total_lines, sample.bad_lines) == (2, 1)
    assert [row[2] for row in sample.rows] == ["ok"]
    assert sample.stats["examples"] == 1


def test_an_empty_file() -> None:
    sample = supervised("")
    assert (sample.rows, sample.total_lines, sample.bad_lines) == ([], 0, 0)
    assert sample.stats["examples"] == 0
    assert sample.stats["messages_mean"] == 0.0


def test_huge_content_is_cut() -> None:
    big = "x" * 1_000_000
    row = only_row(supervised(chat({"role": "system", "content": big}, user(big), assistant(big))))
    assert len(row["system"]) == TEXT_LIMIT
    assert len(row["first_user"]) == TEXT_LIMIT
    assert len(row["last_assistant"]) == TEXT_LIMIT
    assert len(row["conversation"]) == TRANSCRIPT_LIMIT
    assert row["conversation"].startswith("system: xxx") and row["conversation"].endswith("x…")


def test_stats_cover_the_whole_file_but_rows_only_the_first_valid_lines() -> None:
    lines = [chat(user(f"q{i}"), assistant(f"a{i}")) for i in range(10)]
    sample = sample_table(jsonl("junk", *lines), method="supervised", max_rows=3)
    assert [row[2] for row in sample.rows] == ["q0", "q1", "q2"]
    assert (sample.total_lines, sample.bad_lines, sample.stats["examples"]) == (11, 1, 10)


def test_max_rows_zero_gives_no_rows_but_stats() -> None:
    sample = sample_table(jsonl(chat(user("a"))), method="supervised", max_rows=0)
    assert (sample.rows, sample.stats["examples"]) == ([], 1)


def test_unicode_survives_and_line_separators_inside_strings_do_not_split() -> None:
    text = "Grüße 👋 — 東京\u2028next\u2029para"
    line = json.dumps(chat(user(text), assistant("ok")), ensure_ascii=False)
    sample = sample_table(line.encode(), method="supervised")
    assert (sample.total_lines, sample.bad_lines) == (1, 0)
    assert sample.rows[0][2] == text
    assert sample.stats["characters"] == len(text) + 2


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters() -> None:
    data = b'{"messages": [{"role": "user", "content": "caf\xe9 \\ud83d"}]}'
    first_user = sample_table(data, method="supervised").rows[0][2]
    assert isinstance(first_user, str)
    first_user.encode()  # valid UTF-8: W&B can write it
    assert first_user.startswith("caf")


def test_artifact_name_is_the_provider_and_file_id() -> None:
    assert artifact_name("openai", "file-abc123") == "openai-file-abc123"
    assert artifact_name("fireworks", "accounts/a/datasets/d") == "fireworks-accounts-a-datasets-d"
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    assert len(artifact_name("together", long_a)) == 128
    assert artifact_name("together", long_a) != artifact_name("together", long_b)


# -- arbitrary input ---------------------------------------------------------------------------

ALLOWED = (str, int, float, bool, type(None))
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
keys = st.sampled_from(["type", "text", "url", "name", "arguments", "role"]) | st.text(max_size=5)
shallow = scalars | st.lists(scalars, max_size=3) | st.dictionaries(keys, scalars, max_size=3)
json_values = shallow | st.lists(shallow, max_size=3) | st.dictionaries(keys, shallow, max_size=3)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", 1])
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "x"])},
    optional={"text": json_values, "image_url": json_values, "file": json_values},
)
messages = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": json_values | st.lists(parts | json_values, max_size=3),
        "tool_calls": st.lists(
            json_values | st.builds(call, st.text(max_size=5), st.text(max_size=5), json_values),
            max_size=3,
        ),
        "function_call": json_values,
        "weight": json_values,
        "name": json_values,
        "refusal": json_values,
    },
)
message_lists = st.lists(messages | json_values, max_size=3)
examples = st.fixed_dictionaries(
    {},
    optional={
        "messages": message_lists,
        "tools": json_values,
        "input": st.fixed_dictionaries({"messages": message_lists}) | json_values,
        "preferred_output": message_lists | json_values,
        "non_preferred_output": message_lists | json_values,
        "reference_answer": json_values,
    },
)
lines = st.lists(
    examples.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=30), max_size=6
)


@settings(max_examples=150, deadline=None)
@given(
    lines=lines,
    method=st.sampled_from(["supervised", "dpo", "reinforcement", "other"]),
    max_rows=st.integers(-1, 4),
)
def test_arbitrary_lines_never_raise_and_rows_fit_the_columns(
    lines: list[str], method: str, max_rows: int
) -> None:
    text = "\n".join(lines)
    sample = sample_table(text, method=method, max_rows=max_rows)
    assert sample.total_lines == sum(1 for line in text.split("\n") if line.strip())
    assert sample.stats["examples"] + sample.bad_lines == sample.total_lines
    assert len(sample.rows) == max(0, min(max_rows, sample.stats["examples"]))
    for row in sample.rows:
        assert len(row) == len(sample.columns)
        assert all(isinstance(cell, ALLOWED) for cell in row)
    assert all(isinstance(value, int | float) for value in sample.stats.values())


# -- a real offline run ------------------------------------------------------------------------


def test_dataset_artifact_is_recorded_by_the_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # set but empty makes init raise
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))  # artifact staging copies
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    content = jsonl(
        chat({"role": "system", "content": "S"}, user("Grüße 👋"), assistant("a", weight=0)),
        chat(user([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])),
        "not json",
    ).encode()
    sink = WandbSink(WandbOptions(mode="offline", directory=tmp_path))
    spec = RunSpec(run_id="ftjob-abc", project="datasets", entity=None, name="x", tags=())
    path = sink.open(spec).segment
    sink.log_artifact(
        "ftjob-abc",
        dataset_artifact(
            provider="openai", file_id="file-train", content=content, method="supervised"
        ),
    )
    sink.finish("ftjob-abc", 0)
    (artifact,) = wait_for_exit(path).artifacts
    assert (artifact["name"], artifact["type"]) == ("openai-file-train", "dataset")
    assert artifact["metadata"] == {
        "provider": "openai",
        "file_id": "file-train",
        "method": "supervised",
        "total_lines": 3,
        "bad_lines": 1,
        **sample_table(content, method="supervised").stats,
    }
    assert artifact["metadata"]["examples_with_weight_0"] == 1
    assert [entry["path"] for entry in artifact["entries"]] == ["sample.table.json"]
