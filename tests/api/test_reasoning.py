"""Reasoning models: the parser on its own, then the scripted models through
the real llama.cpp engine on the real server (chat completions, /generate,
the template's variables)."""
from __future__ import annotations

import json

import pytest
import requests

from src.api.reasoning import ReasoningParser
from tests.scripted_model import (AGENT_REASONING, THINK_ANSWER, THINK_REASONING,
                                  THINK_REASONING_TOKENS)

ASK = [{"role": "user", "content": "What is 17 × 23?"}]
CALCULATOR = {"type": "function", "function": {
    "name": "Calculator", "parameters": {"type": "object",
                                         "properties": {"input": {"type": "string"}}}}}


def split(text: str, inside: bool, pieces: int) -> tuple[str, str]:
    parser = ReasoningParser(inside)
    step = max(1, len(text) // pieces)
    got = [parser.feed(text[i:i + step]) for i in range(0, len(text), step)] + [parser.finish()]
    return "".join(r for r, _ in got), "".join(a for _, a in got)


@pytest.mark.parametrize("pieces", [1, 3, 7, 1000])
@pytest.mark.parametrize("text, inside, reasoning, answer", [
    ("<think>\nSteps.\n</think>\n\nDone.", False, "Steps.", "Done."),
    ("  <think>a < b </think>b", False, "a < b", "b"),
    ("No thinking here <think>x</think>", False, "", "No thinking here <think>x</think>"),
    ("Steps first.</think>Then the answer.", True, "Steps first.", "Then the answer."),
    ("Cut short while still thinking", True, "Cut short while still thinking", ""),
    ("<think>cut short", False, "cut short", ""),
    ("<thi", False, "", "<thi"),
    ("\n\n", False, "", "\n\n"),
])
def test_the_parser_splits_in_any_pieces(text, inside, reasoning, answer, pieces):
    assert split(text, inside, pieces) == (reasoning, answer)


def chat(server, **body):
    r = requests.post(f"{server.base_url}/chat/completions", timeout=60,
                      json={"messages": ASK, **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_deltas(server, **body) -> list[dict]:
    r = requests.post(f"{server.base_url}/chat/completions", timeout=60, stream=True,
                      json={"messages": ASK, "stream": True, **body})
    assert r.status_code == 200, r.text
    lines = [line[6:] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    return [json.loads(line)["choices"][0] for line in lines[:-1] if json.loads(line)["choices"]]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
def test_chat_returns_reasoning_apart_from_the_answer(scripted_server, temperature):
    body = chat(scripted_server, model="scripted-think", temperature=temperature)
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == THINK_REASONING
    assert message["content"] == THINK_ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == \
        THINK_REASONING_TOKENS


def test_streamed_reasoning_comes_first_and_adds_up(scripted_server):
    choices = stream_deltas(scripted_server, model="scripted-think", temperature=1.0)
    deltas = [c["delta"] for c in choices]
    assert deltas[0] == {"role": "assistant", "content": ""}
    kinds = [k for d in deltas[1:] for k in d if d[k]]
    assert set(kinds) == {"reasoning_content", "content"}
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning_content")
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THINK_REASONING
    # the Chinese answer arrives whole: the character split across two tokens waits for its end
    assert "".join(d.get("content") or "" for d in deltas) == THINK_ANSWER
    assert all("\ufffd" not in (d.get("content") or "") for d in deltas)
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]


@pytest.mark.parametrize("body", [{"chat_template_kwargs": {"enable_thinking": False}},
                                  {"reasoning_effort": "none"}])
def test_template_variables_reach_the_template(scripted_server, body):
    # the scripted template closes the reasoning itself when thinking is off: another reply
    message = chat(scripted_server, model="scripted-think", **body)["choices"][0]["message"]
    assert message["content"] == "Just 391." and "reasoning_content" not in message


def test_template_variables_may_not_replace_the_messages(scripted_server):
    r = requests.post(f"{scripted_server.base_url}/chat/completions", timeout=30, json={
        "messages": ASK, "chat_template_kwargs": {"messages": []}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


def test_earlier_reasoning_goes_to_the_template(scripted_server):
    history = ASK + [{"role": "assistant", "content": "391", "reasoning_content": "17 × 23 ..."},
                     {"role": "user", "content": "Sure?"}]
    r = requests.post(f"{scripted_server.url}/tokenize", timeout=30,
                      json={"model": "scripted-think", "messages": history})
    prompt = requests.post(f"{scripted_server.url}/detokenize", timeout=30, json={
        "model": "scripted-think", "tokens": r.json()["tokens"]}).json()["prompt"]
    assert "assistant\n<think>\n17 × 23 ...\n</think>\n\n391user" in prompt  # no control tokens


def test_a_template_that_opens_the_reasoning(scripted_server):
    message = chat(scripted_server, model="scripted-r1")["choices"][0]["message"]
    assert message == {"role": "assistant", "reasoning_content": "Counting letters.",
                       "content": "Three."}


def test_reasoning_parser_setting(scripted_server):
    # auto leaves a reply that never opened <think> as it is; think_tags splits it
    unopened = chat(scripted_server, model="scripted-unopened")["choices"][0]["message"]
    assert unopened["content"] == "I reason here.</think>The answer."
    load = requests.post(f"{scripted_server.base_url}/models/load", timeout=60, json={
        "model_name": "unopened-think-tags", "model_path": "scripted-unopened.gguf",
        "reasoning_parser": "think_tags"})
    assert load.status_code == 200, load.text
    split_reply = chat(scripted_server, model="unopened-think-tags")["choices"][0]["message"]
    assert (split_reply["reasoning_content"], split_reply["content"]) == ("I reason here.",
                                                                          "The answer.")
    load = requests.post(f"{scripted_server.base_url}/models/load", timeout=60, json={
        "model_name": "think-raw", "model_path": "scripted-think.gguf",
        "reasoning_parser": "none"})
    assert load.status_code == 200, load.text
    raw = chat(scripted_server, model="think-raw")["choices"][0]["message"]
    assert raw["content"].startswith("<think>\nThe user asks") and "reasoning_content" not in raw
    bad = requests.post(f"{scripted_server.base_url}/models/load", timeout=30, json={
        "model_name": "x", "model_path": "scripted-think.gguf", "reasoning_parser": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_parser"


def test_tool_calls_after_the_reasoning(scripted_server):
    body = chat(scripted_server, model="scripted-agent", tools=[CALCULATOR], temperature=1.5)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == AGENT_REASONING
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "Calculator"
    assert json.loads(call["function"]["arguments"]) == {"input": "17*23"}
    choices = stream_deltas(scripted_server, model="scripted-agent", tools=[CALCULATOR])
    assert "".join(c["delta"].get("reasoning_content", "") for c in choices) == AGENT_REASONING
    calls = [t for c in choices for t in c["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "Calculator" and calls[0]["id"].startswith("call_")
    assert json.loads("".join(t["function"]["arguments"] for t in calls)) == {"input": "17*23"}
    assert choices[-1]["finish_reason"] == "tool_calls"


def test_the_openai_sdk_reads_the_reasoning(scripted_server):
    client = scripted_server.client()
    reply = client.chat.completions.create(model="scripted-think", messages=ASK)
    # the SDK keeps fields it does not know as extra attributes
    assert reply.choices[0].message.reasoning_content == THINK_REASONING
    assert reply.choices[0].message.content == THINK_ANSWER
    streamed = client.chat.completions.create(model="scripted-think", messages=ASK, stream=True)
    thought = "".join(getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
                      for chunk in streamed if chunk.choices)
    assert thought == THINK_REASONING


def test_generate_returns_the_reasoning(scripted_server):
    r = requests.post(f"{scripted_server.url}/generate", timeout=60,
                      json={"model": "scripted-think", "prompt": "17 × 23?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == THINK_ANSWER and body["reasoning_content"] == THINK_REASONING
