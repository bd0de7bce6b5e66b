"""Scoring a prompt through the real server: echo with logprobs (the legacy
completions shape lm-eval reads), max_tokens 0, token-id prompts, vLLM's
`prompt_logprobs`, /tokenizer_info; the numbers checked against llama.cpp
itself on the same model file."""
from __future__ import annotations

import numpy as np
import requests

from tests.conftest import SMOL, reference_logprobs

TEXT = "The capital of France is Paris. The capital of Italy is Rome."


def tokenize(server, text: str) -> list[int]:
    r = requests.post(f"{server.url}/tokenize", timeout=30,
                      json={"model": SMOL, "prompt": text, "add_special_tokens": False})
    return r.json()["tokens"]


def test_echo_with_logprobs_scores_the_prompt(smollm_server, reference):
    tokens = tokenize(smollm_server, TEXT)
    expected = reference_logprobs(reference, tokens)
    client = smollm_server.client()
    scored = client.completions.create(model=SMOL, prompt=tokens, echo=True, logprobs=2,
                                       max_tokens=1, temperature=0)
    (choice,) = scored.choices
    lp = choice.logprobs
    assert len(lp.tokens) == len(tokens) + 1  # the prompt's, then the one generated
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert np.allclose(lp.token_logprobs[1:len(tokens)], expected, atol=1e-3)
    assert all(len(top) >= 1 for top in lp.top_logprobs[1:])
    assert "".join(lp.tokens[:len(tokens)]) == choice.text[:len("".join(lp.tokens[:len(tokens)]))]
    assert lp.text_offset[:3] == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    assert scored.usage.prompt_tokens == len(tokens) and scored.usage.completion_tokens == 1
    # a greedy token is its position's top alternative
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert logprob <= max(top.values()) + 1e-9
        if token in top and top[token] == max(top.values()):
            assert logprob == top[token]

    # max_tokens 0: the prompt only, nothing generated; a text prompt scores the same
    only = client.completions.create(model=SMOL, prompt=TEXT, echo=True, logprobs=0,
                                     max_tokens=0)
    (choice,) = only.choices
    assert choice.text == TEXT and choice.finish_reason == "length"
    assert only.usage.completion_tokens == 0
    with_bos = tokenize_with_special(smollm_server, TEXT)
    assert len(choice.logprobs.tokens) == len(with_bos)
    assert np.allclose(choice.logprobs.token_logprobs[1:],
                       reference_logprobs(reference, with_bos), atol=1e-3)


def tokenize_with_special(server, text: str) -> list[int]:
    r = requests.post(f"{server.url}/tokenize", timeout=30, json={"model": SMOL, "prompt": text})
    return r.json()["tokens"]


def test_echo_with_logprobs_streamed(smollm_server):
    tokens = tokenize(smollm_server, TEXT)
    whole = smollm_server.client().completions.create(
        model=SMOL, prompt=tokens, echo=True, logprobs=1, max_tokens=3, temperature=0)
    chunks = list(smollm_server.client().completions.create(
        model=SMOL, prompt=tokens, echo=True, logprobs=1, max_tokens=3, temperature=0,
        stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs
                for x in c.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None
    assert np.allclose(streamed[1:], whole.choices[0].logprobs.token_logprobs[1:], atol=1e-6)


def test_vllm_prompt_logprobs_on_completions_and_chat(smollm_server, reference):
    tokens = tokenize(smollm_server, TEXT)
    expected = reference_logprobs(reference, tokens)
    r = requests.post(f"{smollm_server.base_url}/completions", timeout=60, json={
        "model": SMOL, "prompt": tokens, "max_tokens": 2, "temperature": 0,
        "prompt_logprobs": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    positions = choice["prompt_logprobs"]
    assert len(positions) == len(tokens) and positions[0] is None
    assert choice["logprobs"] is None  # not asked for
    for token, position, want in zip(tokens[1:], positions[1:], expected):
        own = position[str(token)]
        assert abs(own["logprob"] - want) < 1e-3 and own["rank"] >= 1
        assert {v["rank"] for v in position.values()} >= {1, 2, 3}  # and the top three
    chat = requests.post(f"{smollm_server.base_url}/chat/completions", timeout=60, json={
        "model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "prompt_logprobs": 0})
    body = chat.json()
    assert chat.status_code == 200 and body["prompt_logprobs"][0] is None
    assert len(body["prompt_logprobs"]) == body["usage"]["prompt_tokens"]
    assert all(len(p) == 1 for p in body["prompt_logprobs"][1:])  # the token's own only


def test_tokenizer_info_in_vllms_shape(smollm_server, tiny_server):
    info = requests.get(f"{smollm_server.url}/tokenizer_info", timeout=30).json()
    assert info["eos_token"] == "<|im_end|>" and "im_start" in info["chat_template"]
    assert info["tokenizer_class"].startswith("GGUF:") and info["model_max_length"] > 0
    eos_id = tokenize(smollm_server, info["eos_token"])
    assert len(eos_id) == 1  # special tokens are read as such: lm-eval finds EOS this way
    other = requests.get(f"{tiny_server.url}/tokenizer_info", timeout=30,
                         params={"model": "tiny-base"}).json()
    assert "chat_template" not in other
    missing = requests.get(f"{tiny_server.url}/tokenizer_info", timeout=30,
                           params={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_booleans_are_not_token_ids(tiny_server):
    for path, body in (("/detokenize", {"tokens": [True]}),
                       ("/v1/completions", {"model": "tiny-chat", "prompt": [True, 1]}),
                       ("/v1/embeddings", {"model": "tiny-chat", "input": [[1, False]]})):
        r = requests.post(f"{tiny_server.url}{path}", json=body, timeout=30)
        assert r.status_code == 400, (path, r.text)
