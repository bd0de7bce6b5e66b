"""The Anthropic Messages API face, with the official `anthropic` SDK, on
the real server and the scripted models (thinking, tools, streams)."""
from __future__ import annotations

import anthropic
import pytest
import requests

from tests.scripted_model import AGENT_REASONING, THINK_ANSWER, THINK_REASONING

ASK = [{"role": "user", "content": "What is 17 × 23?"}]
CALCULATOR = {"name": "Calculator", "description": "Evaluates a math expression.",
              "input_schema": {"type": "object", "properties": {"input": {"type": "string"}},
                               "required": ["input"]}}


@pytest.fixture(scope="module")
def claude(scripted_server):
    return anthropic.Anthropic(base_url=scripted_server.url, api_key="any", max_retries=0)


def test_a_message_with_thinking(claude):
    message = claude.messages.create(model="scripted-think", max_tokens=200, messages=ASK,
                                     system="Be exact.", extra_body={"temperature": 1.0})
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "scripted-think"
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == THINK_REASONING
    assert text.type == "text" and text.text == THINK_ANSWER
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 16 and message.usage.input_tokens > 10
    counted = claude.messages.count_tokens(model="scripted-think", messages=ASK,
                                           system="Be exact.")
    assert counted.input_tokens == message.usage.input_tokens


def test_the_stream_has_anthropics_event_sequence(claude):
    with claude.messages.stream(model="scripted-think", max_tokens=200, messages=ASK) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    raw = [k for k in kinds if k in ("content_block_start", "content_block_stop",
                                     "message_delta")]
    assert raw == ["content_block_start", "content_block_stop", "content_block_start",
                   "content_block_stop", "message_delta"]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THINK_REASONING
    assert final.content[1].text == THINK_ANSWER
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 16


def test_the_raw_stream_pings_and_numbers_its_blocks(scripted_server):
    r = requests.post(f"{scripted_server.url}/v1/messages", stream=True, timeout=60,
                      headers={"anthropic-version": "2023-06-01", "x-api-key": "any"},
                      json={"model": "scripted-think", "max_tokens": 200, "messages": ASK,
                            "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    names = [line[7:].decode() for line in r.iter_lines() if line.startswith(b"event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2


def test_tool_use_then_tool_result(claude):
    for stream in (False, True):
        request = dict(model="scripted-agent", max_tokens=200, tools=[CALCULATOR],
                       messages=[{"role": "user", "content": "17 × 23? Use the calculator."}])
        if stream:
            with claude.messages.stream(**request) as s:
                asked = s.get_final_message()
        else:
            asked = claude.messages.create(**request)
        assert asked.stop_reason == "tool_use"
        thinking, call = asked.content
        assert thinking.thinking == AGENT_REASONING
        assert call.type == "tool_use" and call.id.startswith("toolu_")
        assert call.name == "Calculator" and call.input == {"input": "17*23"}
        answer = claude.messages.create(**{**request, "messages": request["messages"] + [
            {"role": "assistant", "content": [b.model_dump() for b in asked.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "391"}]}]})
        assert answer.stop_reason == "end_turn"
        assert [b.text for b in answer.content] == ["17 × 23 = 391."]


def test_stop_sequences_max_tokens_and_thinking_switch(claude):
    stopped = claude.messages.create(model="scripted-think", max_tokens=200, messages=ASK,
                                     stop_sequences=["再见"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "再见"
    assert stopped.content[-1].text == "答案是 391。"
    short = claude.messages.create(model="scripted-think", max_tokens=3, messages=ASK)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    off = claude.messages.create(model="scripted-think", max_tokens=50, messages=ASK,
                                 thinking={"type": "disabled"})
    assert [(b.type, b.text) for b in off.content] == [("text", "Just 391.")]
    on = claude.messages.create(model="scripted-think", max_tokens=200, messages=ASK,
                                thinking={"type": "enabled", "budget_tokens": 1024})
    assert on.content[0].type == "thinking"
    named = claude.messages.create(model="scripted-agent", max_tokens=200, messages=ASK,
                                   tools=[CALCULATOR], tool_choice={"type": "none"})
    assert all(b.type != "tool_use" for b in named.content)


@pytest.mark.parametrize("body, status, kind", [
    ({"messages": ASK}, 400, "invalid_request_error"),  # max_tokens is required
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AA=="}}]}]}, 400, "invalid_request_error"),
    ({"max_tokens": 5, "messages": ASK, "tools": [{"type": "web_search_20250305",
                                                   "name": "web_search"}]},
     400, "invalid_request_error"),
    ({"max_tokens": 5, "messages": ASK, "model": "no-such-model"}, 404, "not_found_error"),
])
def test_errors_have_anthropics_shape(scripted_server, body, status, kind):
    r = requests.post(f"{scripted_server.url}/v1/messages", timeout=30,
                      json={"model": "scripted-think", **body})
    assert r.status_code == status, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert error["error"]["message"] and "Traceback" not in error["error"]["message"]


def test_the_sdk_raises_its_own_errors(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="scripted-think", max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "document", "source": {
                "type": "text", "media_type": "text/plain", "data": "x"}}]}])


def test_models_in_anthropics_shape_for_anthropic_clients(scripted_server, claude):
    page = claude.models.list(limit=3)
    assert len(page.data) == 3 and page.has_more and page.last_id == page.data[-1].id
    assert all(m.type == "model" and m.display_name == m.id for m in page.data)
    everything = list(claude.models.list(limit=2))  # the SDK pages on by after_id
    ids = [m.id for m in everything]
    assert len(ids) == len(set(ids)) and "scripted-think" in ids and "scripted-agent" in ids
    assert [m.created_at for m in everything] == sorted((m.created_at for m in everything),
                                                        reverse=True)
    assert claude.models.retrieve("scripted-agent").id == "scripted-agent"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("no-such-model")
    openai_shape = requests.get(f"{scripted_server.base_url}/models", timeout=10).json()
    assert openai_shape["object"] == "list" and {m["id"] for m in openai_shape["data"]} == set(ids)
    bad = requests.get(f"{scripted_server.base_url}/models", timeout=10,
                       params={"after_id": "nope"}, headers={"anthropic-version": "2023-06-01"})
    assert bad.status_code == 404 and bad.json()["type"] == "error"
