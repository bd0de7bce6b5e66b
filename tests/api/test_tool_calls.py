"""Tool calling: the parser on its own, then calls through the real server."""
from __future__ import annotations

import json

import openai
import pytest

from src.api.tool_calls import Arguments, CallStart, Content, ToolCallParser
from tests.conftest import TOOLS_MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "days": {"type": "integer"}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "additionalProperties": False,
                                  "required": ["a", "b"],
                                  "properties": {"a": {"type": "integer"},
                                                 "b": {"type": "integer"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MODEL = TOOLS_MODEL


def parse(text: str, pieces: int):
    parser = ToolCallParser({"get_weather", "add"})
    events = []
    step = max(1, len(text) // pieces)
    for i in range(0, len(text), step):
        events += parser.feed(text[i:i + step])
    events += parser.finish()
    return "".join(e.text for e in events if isinstance(e, Content)), parser.calls, events


@pytest.mark.parametrize("pieces", [1, 5, 1000])
@pytest.mark.parametrize("text, content, calls", [
    ("Just text, no call.", "Just text, no call.", []),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "",
     [("add", {"a": 1, "b": 2})]),
    ('Checking. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'
     '</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>',
     "Checking. ", [("get_weather", {"city": "Oslo", "days": 2}), ("add", {"a": 3, "b": 4})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 1}}', "", [("add", {"a": 1, "b": 1})]),
    ('[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": '
     '{"a": 5, "b": 6}}]', "", [("add", {"a": 1, "b": 2}), ("add", {"a": 5, "b": 6})]),
    ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 9, "b": 9}}]', "",
     [("add", {"a": 9, "b": 9})]),
    ('<|python_tag|>{"name": "add", "parameters": {"a": 7, "b": 0}}', "",
     [("add", {"a": 7, "b": 0})]),
    ('{"arguments": {"a": 2, "b": 2}, "name": "add"}', "", [("add", {"a": 2, "b": 2})]),
    ('{"name": "rm_rf", "arguments": {}}', '{"name": "rm_rf", "arguments": {}}', []),
    ("[1, 2] is a list; <tool_ca is not a tag", "[1, 2] is a list; <tool_ca is not a tag", []),
    ('{"name": "add", "arguments": {"a": 1, "b": "}\\"{"}}', "",
     [("add", {"a": 1, "b": '}"{'})]),
])
def test_parser_reads_the_common_formats_in_any_pieces(text, content, calls, pieces):
    got_content, got_calls, events = parse(text, pieces)
    assert got_content.strip() == content.strip()
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls
    for i, call in enumerate(got_calls):  # the name comes first, then the arguments
        mine = [e for e in events if getattr(e, "index", None) == i]
        assert isinstance(mine[0], CallStart) and mine[0].id == call["id"]
        assert "".join(e.text for e in mine[1:] if isinstance(e, Arguments)) == call["arguments"]


def test_arguments_stream_in_pieces_as_they_are_written():
    _, calls, events = parse('<tool_call>{"name": "add", "arguments": {"a": 12345, "b": 678}}'
                             '</tool_call>', 40)
    assert len([e for e in events if isinstance(e, Arguments)]) > 3


def test_required_tool_call_from_a_random_model(tools_server):
    resp = tools_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
        parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=3)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    args = json.loads(call.function.arguments)
    if call.function.name == "add":
        assert set(args) == {"a", "b"}
    else:
        assert call.function.name == "get_weather" and isinstance(args["days"], int)
        assert len(args["city"]) <= 12


def test_named_and_parallel_tool_calls_stream(tools_server):
    stream = tools_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, ADD], stream=True, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=5)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or []:
                if tc.id:  # the first piece: id and name, then arguments in pieces
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "args": ""}
                calls[tc.index]["args"] += tc.function.arguments or ""
    assert finish == "tool_calls" and len(calls) == 1
    assert calls[0]["name"] == "get_weather"
    assert set(json.loads(calls[0]["args"])) == {"city", "days"}
    resp = tools_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=[ADD], tool_choice="required", max_tokens=300,
        temperature=1.0, seed=11)
    assert len(resp.choices[0].message.tool_calls) >= 1  # parallel: a list of one or more


def test_tool_history_and_none(tools_server):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}]
    resp = tools_server.client().chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=5,
        temperature=0)  # greedy: sampling might end the turn within 5 tokens
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs, param", [
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice"),
    (dict(tools=[WEATHER], tool_choice="sometimes"), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
     "tools.0.function.name"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}),
     "response_format"),
])
def test_bad_tool_requests_are_precise_400s(tools_server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        tools_server.client().chat.completions.create(model=MODEL, messages=ASK,
                                                     max_tokens=5, **kwargs)
    assert err.value.body["param"] == param


def test_a_template_that_takes_tools_renders_them_itself():
    from src.api.tool_calls import prompt_messages, tool_setup
    from src.engines.chat_template import ChatTemplate

    template = ChatTemplate("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }} "
                            "{% endfor %}\n{% endif %}{% for m in messages %}{{ m.role }}: "
                            "{{ m.content }}\n{% endfor %}")
    assert template.takes_tools
    setup = tool_setup([WEATHER, ADD], "auto", None)
    messages, tools = prompt_messages(ASK, setup, template.takes_tools)
    assert messages == ASK and tools == [WEATHER, ADD]
    assert template.render(messages, tools=tools).startswith("TOOLS:get_weather add user: ")
    # a template without tools: ours goes into the system prompt instead
    messages, tools = prompt_messages(ASK, setup, False)
    assert tools is None and messages[0]["role"] == "system"
    assert '"get_weather"' in messages[0]["content"]
