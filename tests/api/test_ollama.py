"""The Ollama API face, with the official `ollama` Python client, on the real
server and the scripted models (thinking, tools, NDJSON streams)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import ollama
import pytest
import requests

from tests.conftest import needs_node, run_node_check
from tests.helpers import wait_until
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


def _loaded(client) -> dict[str, str]:
    return {m.model: m.expires_at for m in client.ps().models}


def _wait_gone(client, model: str) -> None:
    wait_until(lambda: model not in _loaded(client), 30, f"{model} unloaded")


def test_keep_alive_per_request(scripted_server, client):
    client.chat(model="scripted-r1", messages=ASK, stream=False, keep_alive=0)
    _wait_gone(client, "scripted-r1")
    assert "scripted-think" in _loaded(client)  # the default stays
    list(client.chat(model="scripted-r1", messages=ASK, stream=True, keep_alive=-1))
    assert _loaded(client)["scripted-r1"].year == 9999  # kept until unloaded
    list(client.generate(model="scripted-r1", prompt="x", stream=True, keep_alive="2s"))
    left = (_loaded(client)["scripted-r1"] - datetime.now(timezone.utc)).total_seconds()
    assert 0 < left <= 2.5
    _wait_gone(client, "scripted-r1")
    assert client.generate(model="scripted-r1", keep_alive="1h").done_reason == "load"
    assert "scripted-r1" in _loaded(client)
    assert client.generate(model="scripted-r1", keep_alive=0).done_reason == "unload"
    assert "scripted-r1" not in _loaded(client)
    r = requests.post(f"{scripted_server.url}/api/generate", timeout=10,
                      json={"model": "scripted-r1", "prompt": "x", "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


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


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / ((sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5)


def _openai_embedding(server, text: str) -> list[float]:
    r = requests.post(f"{server.base_url}/embeddings", timeout=60,
                      json={"model": "tiny-chat", "input": text})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["embedding"]


def test_embed_matches_the_openai_embeddings(tiny_server):
    tiny = ollama.Client(host=tiny_server.url)
    answer = tiny.embed(model="tiny-chat", input=["hello", "a longer text to embed"])
    assert len(answer.embeddings) == 2 and answer.prompt_eval_count > 2
    assert _cosine(answer.embeddings[0], _openai_embedding(tiny_server, "hello")) > 0.9999
    legacy = tiny.embeddings(model="tiny-chat", prompt="hello").embedding
    assert _cosine(legacy, answer.embeddings[0]) > 0.9999


def test_langchain_ollama_chat_stream_tools_and_embeddings(scripted_server, tiny_server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    thinker = ChatOllama(model="scripted-think", base_url=scripted_server.url, reasoning=True,
                         temperature=1.5)
    reply = thinker.invoke(ASK[0]["content"])
    assert reply.content == THINK_ANSWER
    assert reply.additional_kwargs["reasoning_content"] == THINK_REASONING
    assert reply.usage_metadata["output_tokens"] == 16
    chunks = list(thinker.stream(ASK[0]["content"]))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert len(chunks) > 3 and streamed.content == THINK_ANSWER
    assert streamed.additional_kwargs["reasoning_content"] == THINK_REASONING

    agent = ChatOllama(model="scripted-agent", base_url=scripted_server.url,
                       validate_model_on_init=True).bind_tools([CALCULATOR])
    call = agent.invoke(ASK[0]["content"])
    (tool_call,) = call.tool_calls
    assert tool_call["name"] == "Calculator" and tool_call["args"] == {"input": "17*23"}
    final = agent.invoke([HumanMessage(ASK[0]["content"]), call,
                          ToolMessage("391", tool_call_id=tool_call["id"])])
    assert final.content == "17 × 23 = 391." and not final.tool_calls

    vectors = OllamaEmbeddings(model="tiny-chat", base_url=tiny_server.url).embed_documents(
        ["hello", "a longer text to embed"])
    assert len(vectors) == 2
    assert _cosine(vectors[0], _openai_embedding(tiny_server, "hello")) > 0.9999


@needs_node
def test_langchain_ollama_npm_package_as_n8n_uses_it(scripted_server, tiny_server):
    result = run_node_check("ollama_check.mjs", scripted_server.url, "scripted-think",
                            "scripted-agent", tiny_server.url, "tiny-chat")
    assert result["reply"]["content"] == THINK_ANSWER
    assert result["reply"]["reasoning"] == THINK_REASONING
    assert result["reply"]["usage"]["output_tokens"] == 16
    assert result["stream"]["pieces"] > 3 and result["stream"]["content"] == THINK_ANSWER
    assert result["stream"]["reasoning"] == THINK_REASONING
    assert result["call"] == [{"name": "Calculator", "args": {"input": "17*23"}}]
    assert result["final"] == "17 × 23 = 391."
    first, second = result["embeddings"]
    assert _cosine(first, _openai_embedding(tiny_server, "hello")) > 0.9999
    assert _cosine(first, second) < 0.9999
