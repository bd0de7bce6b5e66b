"""Choices, logprobs and structured output through the official SDK, on the
service's own app in process (tests/in_process.py)."""
from __future__ import annotations

import json
from typing import Literal

import openai
import pydantic
import pytest

MSG = [{"role": "user", "content": "Say something."}]


def test_n_choices_are_independent_and_seeded(tiny_app):
    client = tiny_app.client()
    kwargs = dict(model="tiny-chat", messages=MSG, max_tokens=12, temperature=1.5, n=3, seed=7)
    first = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert len(set(texts)) == 3  # each choice samples on its own
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == texts  # same seed, same request
    assert first.usage.completion_tokens == 36
    single = client.chat.completions.create(**{**kwargs, "n": 1})
    assert first.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_n_choices_stream_with_their_index(tiny_app):
    stream = tiny_app.client().completions.create(
        model="tiny-chat", prompt=["one", "two"], max_tokens=4, n=2, stream=True,
        temperature=0)
    text: dict[int, str] = {}
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2, 3}
    assert text[0] == text[1] and text[2] == text[3]  # greedy: both choices of a prompt agree


def test_chat_logprobs(tiny_app):
    resp = tiny_app.client().chat.completions.create(
        model="tiny-chat", messages=MSG, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == 5
    # a character split across tokens is whole only in the joined bytes
    joined = b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace")
    assert joined == resp.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].token == t.token  # greedy took the likeliest
    plain = tiny_app.client().chat.completions.create(model="tiny-chat", messages=MSG,
                                                         max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_streamed(tiny_app):
    stream = tiny_app.client().chat.completions.create(
        model="tiny-chat", messages=MSG, max_tokens=5, temperature=0, logprobs=True,
        stream=True)
    tokens = [t for chunk in stream for c in chunk.choices if c.logprobs
              for t in c.logprobs.content]
    assert len(tokens) == 5 and all(t.top_logprobs == [] for t in tokens)


def test_completion_logprobs(tiny_app):
    resp = tiny_app.client().completions.create(model="tiny-chat", prompt="abc",
                                                   max_tokens=4, temperature=0, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    # the legacy shape maps token text to logprob: tokens that read alike share a key
    assert lp.text_offset[0] == 0 and all(1 <= len(t) <= 3 for t in lp.top_logprobs)
    assert lp.token_logprobs[0] == max(lp.top_logprobs[0].values())


@pytest.mark.parametrize("kwargs, param", [
    (dict(top_logprobs=3), "top_logprobs"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(n=17), "n"),
    (dict(response_format={"type": "json_schema"}), "response_format"),
    (dict(response_format={"type": "yaml"}), "response_format.type"),
    (dict(response_format={"type": "json_schema",
                           "json_schema": {"name": "x", "schema": {"type": "object",
                                                                   "properties": 5}}}),
     "response_format"),
])
def test_bad_output_options_are_precise_400s(tiny_app, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        tiny_app.client().chat.completions.create(model="tiny-chat", messages=MSG,
                                                     max_tokens=3, **kwargs)
    assert err.value.body["param"] == param


def test_completion_options_an_engine_lacks_are_refused(tiny_app):
    for kwargs, param in ((dict(suffix="end"), "suffix"),
                          (dict(max_tokens=0), "max_tokens"),  # scoring needs echo
                          (dict(logprobs=6), "logprobs"),
                          (dict(extra_body={"prompt_logprobs": 1}, stream=True),
                           "prompt_logprobs")):
        kwargs.setdefault("max_tokens", 2)
        with pytest.raises(openai.BadRequestError) as err:
            tiny_app.client().completions.create(model="tiny-chat", prompt="a", **kwargs)
        assert err.value.body["param"] == param


def test_json_object_and_schema_from_a_random_model(tiny_app):
    client = tiny_app.client()
    resp = client.chat.completions.create(
        model="tiny-chat", messages=MSG, max_tokens=200, temperature=1.0, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "strict": True,
            "schema": {"type": "object", "additionalProperties": False,
                       "required": ["ok", "n"],
                       "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}}}})
    value = json.loads(resp.choices[0].message.content)
    assert isinstance(value["ok"], bool) and isinstance(value["n"], int)


class Weather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    sky: Literal["sunny", "cloudy", "rainy"]
    celsius: int


def test_sdk_parse_with_a_pydantic_model(smollm_server):
    client = smollm_server.client()
    completion = client.chat.completions.parse(
        model="SmolLM2-135M-Instruct", response_format=Weather, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "The weather in Paris: sunny, 21 degrees. "
                                              "Reply in JSON."}])
    weather = completion.choices[0].message.parsed
    assert isinstance(weather, Weather) and weather.sky in ("sunny", "cloudy", "rainy")


def test_tokenize_detokenize_and_unprefixed_routes(tiny_app):
    post = tiny_app.http.post
    tok = post("/tokenize", json={"model": "tiny-chat", "prompt": "hello"}).get_json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] > 0
    back = post("/detokenize", json={"model": "tiny-chat", "tokens": tok["tokens"]}).get_json()
    assert back["prompt"] == "hello"
    chat = post("/tokenize", json={"model": "tiny-chat", "messages": MSG}).get_json()
    rendered = post("/detokenize", json={"model": "tiny-chat",
                                         "tokens": chat["tokens"]}).get_json()
    assert rendered["prompt"] == "user\nSay something.\nassistant\n"  # special tokens unshown
    bad = post("/detokenize", json={"model": "tiny-chat", "tokens": [10**7]})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "tokens"
    r = post("/chat/completions", json={"model": "tiny-chat", "messages": MSG, "max_tokens": 2})
    assert r.status_code == 200 and r.get_json()["object"] == "chat.completion"
    r = post("/completions", json={"model": "tiny-chat", "prompt": "a", "max_tokens": 2})
    assert r.status_code == 200 and r.get_json()["object"] == "text_completion"


def test_token_ids_outside_the_vocabulary_are_a_400_not_a_failed_batch(tiny_app):
    with pytest.raises(openai.BadRequestError) as err:
        tiny_app.client().completions.create(model="tiny-chat", prompt=[1, 2, 10**6],
                                                max_tokens=2)
    assert err.value.body["param"] == "prompt"


def test_embeddings_float_base64_dimensions(smollm_server):
    import numpy as np

    client = smollm_server.client()
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."]
    resp = client.embeddings.create(model="SmolLM2-135M-Instruct", input=texts,
                                    encoding_format="float")
    vectors = np.array([d.embedding for d in resp.data])
    assert [d.index for d in resp.data] == [0, 1, 2] and vectors.shape[1] == 576
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # the paraphrase is closer than the unrelated sentence
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 10
    # the SDK asks for base64 by default and decodes it
    again = client.embeddings.create(model="SmolLM2-135M-Instruct", input=texts[0])
    assert np.allclose(again.data[0].embedding, vectors[0], atol=1e-5)
    short = client.embeddings.create(model="SmolLM2-135M-Instruct", input=texts[0],
                                     dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    assert abs(np.linalg.norm(short.data[0].embedding) - 1.0) < 1e-4
    for kwargs, param in ((dict(input=""), "input"), (dict(input="x", dimensions=10**5),
                                                      "dimensions")):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="SmolLM2-135M-Instruct", **kwargs)
        assert err.value.body["param"] == param
