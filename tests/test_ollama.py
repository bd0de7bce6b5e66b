"""The Ollama API face, with the official `ollama` Python client, on the real
server and the scripted models (thinking, tools, NDJSON streams)."""
from __future__ import annotations

import json

import ollama
import pytest
import requests

from tests.scripted_model import THINK_ANSWER, THINK_REASONING

ASK = [{"role": "user", "content": "What is 17 × 23?"}]
CALCULATOR = {"type": "function", "function": {
    "name": "Calculator", "description": "Evaluates a math expression.",
    "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def client(scripted_server):
    return ollama.Client(host=scripted_server.url)


def test_the_liveness_answer_version_and_tags(scripted_server, client):
    root = requests.get(scripted_server.url, timeout=10, allow_redirects=False)
    assert root.status_code == 200 and root.text == "Ollama is running"
    browser = requests.get(scripted_server.url, timeout=10, allow_redirects=False,
                           headers={"Accept": "text/html"})
    assert browser.status_code == 302 and browser.headers["Location"].endswith("/ui/")
    assert requests.get(f"{scripted_server.url}/api/version", timeout=10).json()["version"]
    names = [m.model for m in client.list().models]
    assert "scripted-think" in names and "scripted-agent" in names
    shown = client.show("scripted-think")
    assert "completion" in shown.capabilities


def test_chat_with_thinking_in_one_piece_and_streamed(client):
    reply = client.chat(model="scripted-think", messages=ASK, stream=False,
                        options={"temperature": 1.5, "num_predict": 200})
    assert reply.message.role == "assistant"
    assert reply.message.thinking == THINK_REASONING
    assert reply.message.content == THINK_ANSWER
    assert reply.done and reply.done_reason == "stop"
    assert reply.eval_count == 16 and reply.prompt_eval_count > 10
    assert reply.total_duration > 0 and reply.eval_duration >= 0
    parts = list(client.chat(model="scripted-think:latest", messages=ASK, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.thinking or "" for p in parts) == THINK_REASONING
    assert "".join(p.message.content or "" for p in parts) == THINK_ANSWER
    quick = client.chat(model="scripted-think", messages=ASK, think=False, stream=False)
    assert quick.message.content == "Just 391." and not quick.message.thinking


def test_tools_come_back_whole_with_object_arguments(client):
    for stream in (False, True):
        answer = client.chat(model="scripted-agent", messages=ASK, tools=[CALCULATOR],
                             stream=stream)
        if stream:
            parts = list(answer)
            calls = [c for p in parts for c in p.message.tool_calls or []]
        else:
            calls = list(answer.message.tool_calls)
        (call,) = calls
        assert call.function.name == "Calculator" and call.function.arguments == {"input": "17*23"}
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "Calculator", "arguments": {"input": "17*23"}}}]},
        {"role": "tool", "content": "391", "tool_name": "Calculator"}]
    final = client.chat(model="scripted-agent", messages=history, tools=[CALCULATOR],
                        stream=False)
    assert final.message.content == "17 × 23 = 391." and not final.message.tool_calls


def test_generate_and_the_raw_ndjson_stream(scripted_server, client):
    done = client.generate(model="scripted-think", prompt="17 × 23?", stream=False)
    assert done.response == THINK_ANSWER and done.thinking == THINK_REASONING
    r = requests.post(f"{scripted_server.url}/api/generate", stream=True, timeout=60,
                      json={"model": "scripted-think", "prompt": "17 × 23?"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    objects = [json.loads(line) for line in r.iter_lines() if line]
    assert objects[-1]["done"] is True and "eval_count" in objects[-1]
    assert "".join(o["response"] for o in objects) == THINK_ANSWER
    short = client.generate(model="scripted-think", prompt="x", stream=False,
                            options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3


def test_keep_alive_zero_unloads_after_the_answer(scripted_server, client):
    import time

    client.chat(model="scripted-r1", messages=ASK, stream=False, keep_alive=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "scripted-r1" not in [m.model for m in client.ps().models]:
            break
        time.sleep(0.2)
    assert "scripted-r1" not in [m.model for m in client.ps().models]
    assert "scripted-think" in [m.model for m in client.ps().models]  # the default stays


def test_errors_have_ollamas_shape(scripted_server, client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=ASK, stream=False)
    assert err.value.status_code == 404 and "no-such-model" in err.value.error
    r = requests.post(f"{scripted_server.url}/api/chat", timeout=10,
                      json={"model": "scripted-think", "messages": ASK, "format": 7})
    assert r.status_code == 400 and set(r.json()) == {"error"}


def test_pull_makes_a_known_model_ready_and_delete_unloads_it(scripted_server, client):
    statuses = [p.status for p in client.pull("scripted-unopened", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "scripted-unopened" in [m.model for m in client.ps().models]
    assert client.pull("scripted-unopened:latest").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3.2")  # nothing is downloaded: only models this server knows
    assert err.value.status_code == 404
    client.delete("scripted-unopened")
    assert "scripted-unopened" not in [m.model for m in client.ps().models]
    assert "scripted-unopened" in [m.model for m in client.list().models]  # the file stays
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("no-such-model")
    assert err.value.status_code == 404
