"""The Responses API, the custom /generate protocol and Dify's requests: with
SmolLM2 on the real server, with the tiny models in process
(tests/in_process.py)."""
from __future__ import annotations

import json

import openai
import pytest


def test_responses_api_with_the_sdk(smollm_server):
    client = smollm_server.client()
    resp = client.responses.create(model="SmolLM2-135M-Instruct", input="What is 2+2?",
                                   instructions="Answer with a number.", max_output_tokens=8,
                                   temperature=0)
    assert resp.object == "response" and resp.status in ("completed", "incomplete")
    assert resp.output_text
    assert resp.usage.input_tokens > 5 and 0 < resp.usage.output_tokens <= 8
    chat = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Answer with a number."},
                  {"role": "user", "content": "What is 2+2?"}])
    assert resp.output_text == chat.choices[0].message.content  # the same chat underneath


def test_responses_api_stream_events(smollm_server):
    client = smollm_server.client()
    events = list(client.responses.create(
        model="SmolLM2-135M-Instruct", stream=True, max_output_tokens=6, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}]))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas and deltas == done.text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 6


def test_responses_api_chains_only_to_stored_responses(tiny_app):
    client = tiny_app.client()
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="tiny-chat", input="hi", previous_response_id="resp_x")
    assert err.value.body["param"] == "previous_response_id"


def test_generate_with_history(tiny_app):
    post = tiny_app.http.post
    body = {"model": "tiny-chat", "prompt": "and now?", "system_info": "Be brief.",
            "history_input": ["hello"], "history_output": ["hi there"], "max_tokens": 6,
            "temperature": 0}
    r = post("/generate", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    answer = r.get_json()
    assert answer["object"] == "generation" and answer["usage"]["completion_tokens"] == 6
    # the same conversation as chat messages gives the same text
    chat = tiny_app.client().chat.completions.create(
        model="tiny-chat", max_tokens=6, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "hi there"},
                  {"role": "user", "content": "and now?"}])
    assert answer["text"] == chat.choices[0].message.content
    streamed = post("/generate", json={**body, "stream": True})
    lines = [line for line in streamed.get_data().split(b"\n") if line]
    assert lines[-1] == b"data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in lines[:-1] if line.startswith(b"data: {"))
    assert text == answer["text"]
    bad = post("/generate", json={**body, "history_output": []})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "history_output"
    bad = post("/generate", json={**body, "temperature": 9})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "temperature"


def test_difys_credential_check_and_stream_parser(tiny_app):
    r = tiny_app.http.post("/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "ping"}],
                                 "max_tokens": 5})
    assert r.status_code == 200 and r.get_json()["object"] == "chat.completion"
    assert r.get_json()["model"] == "tiny-chat"  # no model given: the default one
    stream = tiny_app.http.post("/v1/chat/completions",
                                json={"messages": [{"role": "user", "content": "ping"}],
                                      "max_tokens": 5, "stream": True})
    raw = stream.get_data(as_text=True)
    for block in raw.strip().split("\n\n"):  # Dify splits on blank lines
        assert block.startswith("data: ") or block.startswith(":")
        payload = block[6:]
        if block.startswith("data: ") and payload != "[DONE]":
            json.loads(payload)  # every data line but the last is JSON
    assert raw.rstrip().endswith("data: [DONE]")


def test_openapi_describes_every_route(tiny_app):
    doc = tiny_app.http.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                 "/v1/models", "/v1/models/{model_id}/unload", "/v1/models/load", "/generate",
                 "/tokenize", "/detokenize", "/health", "/metrics", "/v1/system/status",
                 "/v1/logs/recent"):
        assert path in doc["paths"], path
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = chat["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    schema = doc["components"]["schemas"][ref]
    assert {"messages", "tools", "response_format", "logprobs"} <= set(schema["properties"])
    assert "delete" in doc["paths"]["/v1/models/{model_id}"]


def test_the_compatibility_script_passes(smollm_server):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "test_openai_compatibility.py"),
                          "--base-url", smollm_server.base_url,
                          "--model", "SmolLM2-135M-Instruct"],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "13 passed, 0 failed" in out.stdout
