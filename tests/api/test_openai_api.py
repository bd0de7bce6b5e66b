"""The OpenAI API's protocol: the tiny models through the service's own app
in process (tests/in_process.py), with the official openai SDK and Flask's
test client."""
from __future__ import annotations

import openai
import pytest

CHAT = [{"role": "user", "content": "Say something."}]


def stream_chat(client, **kwargs):
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_list_and_retrieve_models(tiny_app):
    client = tiny_app.client()
    ids = [m.id for m in client.models.list().data]
    assert "tiny-chat" in ids and "tiny-base" in ids
    model = client.models.retrieve("tiny-chat")
    assert model.id == "tiny-chat" and model.object == "model" and model.created > 0
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"


def test_chat_completion_shape_and_usage(tiny_app):
    client = tiny_app.client()
    resp = client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=12,
                                          temperature=0)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "tiny-chat"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    # the prompt is the ChatML rendering, tokenized byte by byte (no merges apply)
    rendered = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    n_special = 3
    assert resp.usage.prompt_tokens == len(rendered.encode()) - len("<|im_start|>") * 2 \
        - len("<|im_end|>") + n_special
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_stream_equals_non_stream_at_temperature_zero(tiny_app):
    client = tiny_app.client()
    args = dict(model="tiny-chat", messages=CHAT, max_tokens=40, temperature=0)
    full = client.chat.completions.create(**args).choices[0].message.content
    chunks, streamed = stream_chat(client, stream_options={"include_usage": True}, **args)
    assert streamed == full and len(full) > 0
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_and_not(tiny_app):
    client = tiny_app.client()
    args = dict(model="tiny-base", prompt="Once upon a mouse", max_tokens=20, temperature=0)
    resp = client.completions.create(**args)
    assert resp.object == "text_completion" and resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == len("Once upon a mouse".encode())  # no merge applies
    assert resp.usage.completion_tokens == 20
    chunks = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == resp.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_default_max_tokens_and_prompt_list(tiny_app):
    client = tiny_app.client()
    resp = client.completions.create(model="tiny-base", prompt=["ab", "cd"], temperature=0)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage.completion_tokens == 32  # OpenAI's default of 16 each
    single = client.completions.create(model="tiny-base", prompt="cd", temperature=0)
    assert single.choices[0].text == resp.choices[1].text


def test_max_completion_tokens_alias(tiny_app):
    resp = tiny_app.client().chat.completions.create(
        model="tiny-chat", messages=CHAT, max_completion_tokens=7, temperature=0)
    assert resp.usage.completion_tokens == 7 and resp.choices[0].finish_reason == "length"


def test_stop_strings_across_tokens(tiny_app):
    client = tiny_app.client()
    args = dict(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=60)
    full = client.chat.completions.create(**args).choices[0].message.content
    printable = [i for i in range(10, len(full) - 3) if full[i:i + 3].isprintable()
                 and "\ufffd" not in full[i:i + 3]]
    assert printable, f"no plain 3-character span in {full!r}"
    start = printable[0]
    stop = full[start:start + 3]  # three characters: three byte tokens at least
    first = full.index(stop)
    resp = client.chat.completions.create(stop=[stop, "never-produced-xyz"], **args)
    assert resp.choices[0].message.content == full[:first]
    assert resp.choices[0].finish_reason == "stop"
    _, streamed = stream_chat(client, stop=stop, **args)
    assert streamed == full[:first]


def test_seed_reproducible(tiny_app):
    client = tiny_app.client()
    args = dict(model="tiny-chat", messages=CHAT, temperature=1.0, max_tokens=30, seed=42)
    one = client.chat.completions.create(**args).choices[0].message.content
    two = client.chat.completions.create(**args).choices[0].message.content
    other = client.chat.completions.create(**{**args, "seed": 7}).choices[0].message.content
    assert one == two
    assert one != other


def test_chat_without_template_is_400_and_completion_works(tiny_app):
    client = tiny_app.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-base", messages=CHAT, max_tokens=5)
    assert "chat template" in err.value.body["message"]
    assert client.completions.create(model="tiny-base", prompt="x", max_tokens=3).choices


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "nope", "messages": CHAT}, 404, "does not exist"),
    ({"model": "tiny-chat"}, 400, "messages"),
    ({"model": "tiny-chat", "messages": "hello"}, 400, "messages"),
    ({"model": "tiny-chat", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"model": "tiny-chat", "messages": CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "tiny-chat", "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny-chat", "messages": CHAT, "max_tokens": 100000}, 400,
     "maximum context length is 512 tokens"),
])
def test_bad_requests_get_openai_errors(tiny_app, body, status, fragment):
    r = tiny_app.http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] or fragment == error["param"]


def test_malformed_json_and_unknown_route(tiny_app):
    r = tiny_app.http.post("/v1/chat/completions", data="{not json",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.get_json()["error"]["message"]
    r = tiny_app.http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["type"] == "invalid_request_error"


def test_context_length_error_names_both_numbers(tiny_app):
    client = tiny_app.client()
    long_prompt = "x" * 600  # 600 byte tokens > 512
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-base", prompt=long_prompt, max_tokens=5)
    message = err.value.body["message"]
    assert "maximum context length is 512 tokens" in message and "605" in message
    assert err.value.body["code"] == "context_length_exceeded"
    # and the server keeps serving
    assert client.completions.create(model="tiny-base", prompt="x", max_tokens=2).choices


def test_unknown_fields_are_ignored(tiny_app):
    r = tiny_app.http.post("/v1/chat/completions", json={
        "model": "tiny-chat", "messages": CHAT, "max_tokens": 3, "temperature": 0, "user": "u1",
        "some_future_field": {"a": 1}, "parallel_tool_calls": False})
    assert r.status_code == 200 and r.get_json()["usage"]["completion_tokens"] == 3


def test_health_reports_ready(tiny_app):
    r = tiny_app.http.get("/health")
    assert r.status_code == 200
    assert "tiny-chat" in r.get_json()["models_ready"]
    assert r.headers.get("X-Request-ID")


def test_prefix_cache_hits_are_reported(tiny_app):
    client = tiny_app.client()
    messages = [{"role": "system", "content": "A long shared system prompt " * 4},
                {"role": "user", "content": "first question"}]
    first = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=4,
                                           temperature=0)
    second = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=4,
                                            temperature=0)
    assert second.choices[0].message.content == first.choices[0].message.content
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == second.usage.prompt_tokens - 1
