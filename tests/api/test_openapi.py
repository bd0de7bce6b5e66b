"""/openapi.json tells the truth: every route declares its body and its
answers (from the pydantic models that validate and shape them), the
constraints the server enforces are in the schemas, and real answers of
the real server, in every face, validate against what the spec says."""
from __future__ import annotations

import jsonschema
import pytest
import requests
from referencing import Registry, Resource

from tests.scripted_model import THINK_ANSWER

ASK = [{"role": "user", "content": "What is 17 × 23?"}]


@pytest.fixture(scope="module")
def doc(tiny_server) -> dict:
    return requests.get(f"{tiny_server.url}/openapi.json", timeout=30).json()


def schema_of(doc: dict, path: str, method: str, status: str = "200") -> dict:
    answer = doc["paths"][path][method]["responses"][status]
    return answer["content"]["application/json"]["schema"]


def check(doc: dict, schema: dict, body) -> None:
    """`body` valid against `schema`, its $refs read from the document."""
    registry = Registry().with_resource("urn:spec", Resource.from_contents(
        {**doc, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    ref = schema["$ref"].replace("#/", "urn:spec#/")
    jsonschema.Draft202012Validator({"$ref": ref}, registry=registry).validate(body)


def test_every_route_declares_its_body_and_answers(doc):
    assert doc["openapi"].startswith("3.1")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            answers = {s: a for s, a in op["responses"].items() if s.startswith(("2", "3"))}
            assert answers, (method, path)
            assert "default" in op["responses"]
            if method == "post":  # every POST takes a JSON body, aliases too
                assert "requestBody" in op, path
            for status, answer in answers.items():
                if status not in ("302",) and (method, path) != ("delete", "/api/delete"):
                    assert answer.get("content"), (method, path, status)
    assert "security" not in doc  # no keys on this server: none asked for
    assert not any("security" in op for item in doc["paths"].values() for op in item.values())
    chat = doc["paths"]["/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    event = chat["responses"]["200"]["content"]["text/event-stream"]["schema"]
    data = event["properties"]["data"]["anyOf"]  # JSON chunks, then [DONE]
    assert data[0] == {"const": "[DONE]"}
    assert data[1]["contentSchema"] == {"$ref": "#/components/schemas/ChatCompletionChunk"}


def test_the_enforced_constraints_are_in_the_schemas(doc):
    schemas = doc["components"]["schemas"]
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert prompt[0] == {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"}
    ids = next(s for s in prompt if s.get("items", {}).get("type") == "integer")
    assert ids["minItems"] == 1 and ids["items"]["minimum"] == 0
    assert schemas["TokenizeRequest"]["oneOf"] == [{"required": ["prompt"]},
                                                   {"required": ["messages"]}]
    tool = schemas["ToolDef"]
    assert tool["properties"]["type"]["const"] == "function" and tool["required"] == ["function"]
    assert schemas["FunctionDef"]["properties"]["name"]["minLength"] == 1
    assert schemas["ChatCompletionRequest"]["additionalProperties"] == {
        "$ref": "#/components/schemas/JsonValue"}  # unknown fields: any JSON, but no NUL


def test_a_405_says_which_methods_the_path_takes(tiny_server):
    r = requests.get(f"{tiny_server.url}/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "OPTIONS, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    # a model id may hold slashes, but /status is the status route's alone
    status = requests.options(f"{tiny_server.url}/v1/models/org/tiny/status", timeout=10)
    assert sorted(status.headers["Allow"].split(", ")) == ["GET", "HEAD", "OPTIONS"]
    assert requests.delete(f"{tiny_server.url}/v1/models/tiny-chat/status",
                           timeout=10).status_code == 405


def test_openai_answers_match_the_spec(tiny_server, doc):
    base, url = tiny_server.base_url, tiny_server.url
    chat = {"model": "tiny-chat", "messages": ASK, "max_tokens": 3, "logprobs": True,
            "top_logprobs": 2}
    answers = [
        ("/v1/models", "get", requests.get(f"{base}/models", timeout=30)),
        ("/v1/models/{model_id}", "get", requests.get(f"{base}/models/tiny-chat", timeout=30)),
        ("/v1/chat/completions", "post", requests.post(f"{base}/chat/completions", json=chat,
                                                       timeout=60)),
        ("/v1/completions", "post", requests.post(f"{base}/completions", timeout=60, json={
            "model": "tiny-chat", "prompt": "hi", "max_tokens": 2, "echo": True,
            "logprobs": 1, "prompt_logprobs": 1})),
        ("/v1/embeddings", "post", requests.post(f"{base}/embeddings", timeout=60, json={
            "model": "tiny-chat", "input": ["a", "b"], "encoding_format": "base64"})),
        ("/tokenize", "post", requests.post(f"{url}/tokenize", json={"prompt": "hi"},
                                            timeout=30)),
        ("/detokenize", "post", requests.post(f"{url}/detokenize", json={"tokens": [104]},
                                              timeout=30)),
        ("/tokenizer_info", "get", requests.get(f"{url}/tokenizer_info", timeout=30)),
        ("/generate", "post", requests.post(f"{url}/generate", json={"prompt": "hi",
                                                                     "max_tokens": 2},
                                            timeout=60)),
        ("/health", "get", requests.get(f"{url}/health", timeout=30)),
        ("/v1/models/{model_id}/status", "get", requests.get(f"{base}/models/tiny-chat/status",
                                                             timeout=30)),
        ("/v1/system/status", "get", requests.get(f"{base}/system/status", timeout=30)),
        ("/v1/system/metrics", "get", requests.get(f"{base}/system/metrics", timeout=30)),
        ("/v1/system/health", "get", requests.get(f"{base}/system/health", timeout=60)),
        ("/v1/logs/recent", "get", requests.get(f"{base}/logs/recent", timeout=30)),
        ("/openapi.json", "get", requests.get(f"{url}/openapi.json", timeout=30)),
    ]
    for path, method, r in answers:
        assert r.status_code == 200, (path, r.text)
        check(doc, schema_of(doc, path, method), r.json())
    missing = requests.post(f"{base}/chat/completions", timeout=30,
                            json={**chat, "model": "no-such-model"})
    assert missing.status_code == 404
    check(doc, doc["paths"]["/v1/chat/completions"]["post"]["responses"]["default"]["content"]
          ["application/json"]["schema"], missing.json())


def test_responses_anthropic_and_ollama_answers_match_the_spec(scripted_server):
    doc = requests.get(f"{scripted_server.url}/openapi.json", timeout=30).json()
    base, url = scripted_server.base_url, scripted_server.url
    created = requests.post(f"{base}/responses", timeout=60,
                            json={"model": "scripted-think", "input": "What is 17 × 23?"})
    rid = created.json()["id"]
    answers = [
        ("/v1/responses", "post", created),
        ("/v1/responses/{response_id}", "get", requests.get(f"{base}/responses/{rid}",
                                                            timeout=30)),
        ("/v1/responses/{response_id}/input_items", "get",
         requests.get(f"{base}/responses/{rid}/input_items", timeout=30)),
        ("/v1/messages", "post", requests.post(f"{base}/messages", timeout=60, json={
            "model": "scripted-think", "max_tokens": 200, "messages": ASK})),
        ("/v1/messages/count_tokens", "post", requests.post(
            f"{base}/messages/count_tokens", json={"model": "scripted-think", "messages": ASK},
            timeout=30)),
        ("/api/version", "get", requests.get(f"{url}/api/version", timeout=30)),
        ("/api/tags", "get", requests.get(f"{url}/api/tags", timeout=30)),
        ("/api/ps", "get", requests.get(f"{url}/api/ps", timeout=30)),
        ("/api/show", "post", requests.post(f"{url}/api/show", json={"model": "scripted-think"},
                                            timeout=30)),
        ("/api/chat", "post", requests.post(f"{url}/api/chat", timeout=60, json={
            "model": "scripted-think", "messages": ASK, "stream": False})),
        ("/api/generate", "post", requests.post(f"{url}/api/generate", timeout=60, json={
            "model": "scripted-think", "prompt": "17 × 23?", "stream": False})),
        ("/api/pull", "post", requests.post(f"{url}/api/pull", timeout=60, json={
            "model": "scripted-think", "stream": False})),
        ("/v1/responses/{response_id}", "delete", requests.delete(f"{base}/responses/{rid}",
                                                                  timeout=30)),
    ]
    for path, method, r in answers:
        assert r.status_code == 200, (path, r.text)
        check(doc, schema_of(doc, path, method), r.json())
    assert answers[3][2].json()["content"][1]["text"] == THINK_ANSWER
    for path, body in (("/v1/messages", {"model": "nope", "max_tokens": 5, "messages": ASK}),
                       ("/api/chat", {"model": "nope", "messages": ASK, "stream": False})):
        r = requests.post(f"{url}{path}", json=body, timeout=30)
        assert r.status_code == 404
        check(doc, doc["paths"][path]["post"]["responses"]["default"]["content"]
              ["application/json"]["schema"], r.json())
