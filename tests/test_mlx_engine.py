"""The MLX engine for real (MLX's CPU build on Linux) on a tiny random Llama
folder, served through the HTTP API next to the llama.cpp models."""
from __future__ import annotations

import shutil

import openai
import pytest
import requests

pytest.importorskip("mlx_lm")

MODEL = "tiny-mlx"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def mlx_server(tiny_server, model_dir, tmp_path_factory):
    from tests.tiny_hf_model import write_tiny_hf_model

    folder = write_tiny_hf_model(tmp_path_factory.mktemp("hf") / "tiny-llama-hf")
    target = model_dir / "tiny-llama-hf"
    if not target.exists():
        shutil.copytree(folder, target)
    r = requests.post(f"{tiny_server.base_url}/models/load", timeout=120, json={
        "model_name": MODEL, "model_path": "tiny-llama-hf", "engine_type": "mlx",
        "context_size": 2048})
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "mlx"
    return tiny_server


def test_a_folder_needs_an_engine_on_this_machine(mlx_server):
    r = requests.post(f"{mlx_server.base_url}/models/load", timeout=60, json={
        "model_name": "folder-without-engine", "model_path": "tiny-llama-hf"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine_type"


def test_chat_usage_and_greedy_stream_equals_plain(mlx_server):
    client = mlx_server.client()
    plain = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=12,
                                           temperature=0)
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens > 3
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=12,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_seed_and_completions(mlx_server):
    client = mlx_server.client()
    full = client.completions.create(model=MODEL, prompt="once upon", max_tokens=20,
                                     temperature=0).choices[0].text
    cut = full[3:6]
    stopped = client.completions.create(model=MODEL, prompt="once upon", max_tokens=20,
                                        temperature=0, stop=[cut]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == full[:full.index(cut)]
    a, b = (client.completions.create(model=MODEL, prompt="once", max_tokens=10, seed=3,
                                      temperature=1.0).choices[0].text for _ in range(2))
    assert a == b


def test_cancel_frees_the_model(mlx_server):
    resp = requests.post(f"{mlx_server.base_url}/chat/completions", stream=True, timeout=60,
                         json={"model": MODEL, "messages": MSG, "max_tokens": 1500,
                               "stream": True})
    lines = resp.iter_lines()
    next(line for line in lines if line.startswith(b"data: "))
    resp.close()  # the client leaves: the request is aborted
    answer = mlx_server.client(timeout=30).chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=3)
    assert answer.usage.completion_tokens == 3


def test_what_mlx_cannot_do_is_a_precise_400(mlx_server):
    client = mlx_server.client()
    for kwargs, param in ((dict(response_format={"type": "json_object"}), "response_format"),
                          (dict(logprobs=True), "logprobs"),
                          (dict(extra_body={"ignore_eos": True}), "ignore_eos")):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3, **kwargs)
        assert err.value.body["param"] == param
