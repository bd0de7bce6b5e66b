"""One behavioural suite over every engine this machine has: llama.cpp on the
tiny GGUF model, MLX and vLLM (their CPU builds) on a tiny random Llama
folder, all served by the same real gunicorn + gevent server, so that the
engines cannot drift apart. vLLM's run is `make test-vllm` (its own venv)."""
from __future__ import annotations

import importlib.util
import json
import shutil

import openai
import pytest
import requests

from tests.conftest import TOOLS_MODEL
from tests.helpers import metric_sum

ENGINES = ["llama_cpp", "mlx", "vllm"]
# what each engine does beyond the common contract (else: a precise 400)
EXTRAS = {"llama_cpp": {"json", "logprobs", "ignore_eos"},
          "mlx": {"json", "logprobs", "ignore_eos"},
          "vllm": {"json", "logprobs", "ignore_eos"}}
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module", params=ENGINES)
def served(request, tiny_server, model_dir, tmp_path_factory):
    """(server, model id, engine) with a tiny model loaded on that engine,
    with a 2048-token context."""
    engine = request.param
    if engine == "llama_cpp":
        request.getfixturevalue("tools_server")  # the tiny GGUF with a long context
        return tiny_server, TOOLS_MODEL, engine
    if importlib.util.find_spec({"mlx": "mlx_lm", "vllm": "vllm"}[engine]) is None:
        pytest.skip(f"{engine} is not installed here")
    from tests.tiny_hf_model import write_tiny_hf_model

    target = model_dir / "tiny-llama-hf"
    if not target.exists():
        shutil.copytree(write_tiny_hf_model(tmp_path_factory.mktemp("hf") / "m"), target)
    name = f"tiny-{engine}"
    r = requests.post(f"{tiny_server.base_url}/models/load", timeout=300, json={
        "model_name": name, "model_path": "tiny-llama-hf", "engine_type": engine,
        "context_size": 2048, "max_batch_size": 4})
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == engine
    return tiny_server, name, engine


def test_chat_usage_and_greedy_stream_equals_plain(served):
    server, model, _ = served
    client = server.client()
    plain = client.chat.completions.create(model=model, messages=MSG, max_tokens=12,
                                           temperature=0)
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens > 3
    chunks = list(client.chat.completions.create(model=model, messages=MSG, max_tokens=12,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_strings_and_seed(served):
    server, model, _ = served
    client = server.client()
    full = client.completions.create(model=model, prompt="once upon", max_tokens=20,
                                     temperature=0).choices[0].text
    cut = full[3:6]
    stopped = client.completions.create(model=model, prompt="once upon", max_tokens=20,
                                        temperature=0, stop=[cut]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == full[:full.index(cut)]
    a, b = (client.completions.create(model=model, prompt="once", max_tokens=10, seed=3,
                                      temperature=1.0).choices[0].text for _ in range(2))
    assert a == b


def test_concurrent_requests_all_complete(served):
    server, model, _ = served
    resp = server.client().completions.create(model=model, prompt=["a", "b", "c"],
                                              max_tokens=8, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 24


def test_requests_run_together_and_batching_changes_no_answer(served):
    """Four greedy prompts streamed at once: the engine makes most of their
    tokens in steps they share (its batched-tokens counter in /metrics), and
    each prompt streams the text it gets when it runs alone."""
    server, model, _ = served
    client = server.client(timeout=120)
    prompts = ["once upon a time", "the quick brown fox", "hello there, how", "a b c d e f"]
    ask = dict(model=model, max_tokens=1000, temperature=0, extra_body={"ignore_eos": True})
    alone = [client.completions.create(prompt=p, **ask).choices[0].text for p in prompts]
    batched = "vllm_obtain_generation_tokens_batched_total"
    before = metric_sum(f"{server.url}/metrics", model, batched)
    # one request: its four prompts reach the engine together, however slowly this
    # machine lets the clients and the server's accept loop run (seen on 2 cores with
    # vLLM's processes busy: separate requests could arrive one stream apart)
    together = [""] * len(prompts)
    for chunk in client.completions.create(prompt=prompts, stream=True, **ask):
        for choice in chunk.choices:
            together[choice.index] += choice.text
    assert together == alone
    shared = metric_sum(f"{server.url}/metrics", model, batched) - before
    assert shared > len(prompts) * 1000 / 2, f"only {shared} tokens were made in shared steps"


def test_a_client_that_leaves_frees_the_model(served):
    server, model, _ = served
    resp = requests.post(f"{server.base_url}/chat/completions", stream=True, timeout=60,
                         json={"model": model, "messages": MSG, "max_tokens": 1500,
                               "stream": True})
    lines = resp.iter_lines()
    next(line for line in lines if line.startswith(b"data: "))
    resp.close()
    answer = server.client(timeout=60).chat.completions.create(model=model, messages=MSG,
                                                               max_tokens=3)
    assert answer.usage.completion_tokens == 3


def test_extras_work_or_are_precise_400s(served):
    server, model, engine = served
    client = server.client()
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
        "additionalProperties": False}}}
    cases = {"json": (dict(response_format=schema, max_tokens=40), "response_format"),
             "logprobs": (dict(logprobs=True, top_logprobs=2, max_tokens=3), "logprobs"),
             "ignore_eos": (dict(extra_body={"ignore_eos": True}, max_tokens=3), "ignore_eos")}
    for feature, (kwargs, param) in cases.items():
        if feature in EXTRAS[engine]:
            resp = client.chat.completions.create(model=model, messages=MSG, temperature=0,
                                                  **kwargs)
            if feature == "json":
                assert isinstance(json.loads(resp.choices[0].message.content)["n"], int)
            if feature == "logprobs":
                assert len(resp.choices[0].logprobs.content[0].top_logprobs) == 2
        else:
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model=model, messages=MSG, **kwargs)
            assert err.value.body["param"] == param


def test_ignore_eos_generates_past_the_end_token(served):
    """A logit bias makes the end token certain: the answer ends at once,
    unless `ignore_eos` asks for all of `max_tokens`."""
    server, model, engine = served
    eos = requests.post(f"{server.url}/tokenize", timeout=30,
                        json={"model": model, "prompt": "<|im_end|>",
                              "add_special_tokens": False}).json()["tokens"]
    assert len(eos) == 1  # both tiny models end a turn with this one token
    client = server.client()
    ask = dict(model=model, messages=MSG, max_tokens=6, logit_bias={str(eos[0]): 100})
    ends = client.chat.completions.create(**ask)
    assert ends.choices[0].finish_reason == "stop" and ends.usage.completion_tokens <= 1
    if "ignore_eos" in EXTRAS[engine]:
        goes_on = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
        assert goes_on.choices[0].finish_reason == "length"
        assert goes_on.usage.completion_tokens == 6


def test_prompt_logprobs_agree_with_the_generated_tokens_own(served):
    """Scoring prompt + greedy continuation gives the continuation's tokens the
    logprobs they had when generated; max_tokens 0 generates nothing."""
    server, model, _ = served
    client = server.client()
    prompt = requests.post(f"{server.url}/tokenize", timeout=30, json={
        "model": model, "prompt": "once upon a time", "add_special_tokens": False}).json()["tokens"]
    made = requests.post(f"{server.base_url}/completions", timeout=60, json={
        "model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 0,
        "return_tokens_as_token_ids": True}).json()["choices"][0]["logprobs"]
    generated = [int(t.removeprefix("token_id:")) for t in made["tokens"]]
    whole = prompt + generated
    scored = client.completions.create(model=model, prompt=whole, echo=True, logprobs=1,
                                       max_tokens=0).choices[0]
    lp = scored.logprobs
    assert scored.finish_reason == "length" and len(lp.tokens) == len(whole)
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert lp.token_logprobs[len(prompt):] == pytest.approx(made["token_logprobs"], abs=2e-3)
    vllm_shape = requests.post(f"{server.base_url}/completions", timeout=60, json={
        "model": model, "prompt": whole, "max_tokens": 1, "prompt_logprobs": 2}).json()
    positions = vllm_shape["choices"][0]["prompt_logprobs"]
    assert positions[0] is None and len(positions) == len(whole)
    for token, logprob, position in zip(whole[1:], lp.token_logprobs[1:], positions[1:]):
        assert position[str(token)]["logprob"] == pytest.approx(logprob, abs=2e-3)


def test_a_folder_needs_an_engine_on_this_machine(tiny_server, model_dir):
    if not (model_dir / "tiny-llama-hf").exists():
        pytest.skip("no model folder was written (no MLX or vLLM here)")
    r = requests.post(f"{tiny_server.base_url}/models/load", timeout=60, json={
        "model_name": "folder-without-engine", "model_path": "tiny-llama-hf"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine_type"


def test_a_repeated_prompt_reuses_its_cache(served):
    server, model, _ = served
    client = server.client()
    prompt = "the quick brown fox jumps over the lazy dog. " * 30  # vLLM caches whole blocks
    first = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    again = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    assert again.choices[0].text == first.choices[0].text  # the cache changes nothing
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < again.usage.prompt_tokens


@pytest.fixture(scope="module", params=ENGINES)
def thinker(request, tiny_server, model_dir, tmp_path_factory):
    """(server, model id) of the scripted reasoning model on each engine: the
    GGUF for llama.cpp, the same script as a Hugging Face folder for MLX and vLLM."""
    from tests.scripted_model import THINK_SCRIPTS, write_scripted_hf_model, write_scripted_model

    engine = request.param
    if engine == "llama_cpp":
        path = write_scripted_model(model_dir / "scripted-think-engines.gguf", THINK_SCRIPTS)
    elif importlib.util.find_spec({"mlx": "mlx_lm", "vllm": "vllm"}[engine]) is None:
        pytest.skip(f"{engine} is not installed here")
    else:
        path = model_dir / "scripted-think-hf"
        if not path.exists():
            write_scripted_hf_model(path, THINK_SCRIPTS)
    name = f"thinker-{engine}"
    r = requests.post(f"{tiny_server.base_url}/models/load", timeout=300, json={
        "model_name": name, "model_path": path.name, "engine_type": engine,
        "context_size": 1024, "max_batch_size": 2})
    assert r.status_code == 200, r.text
    return tiny_server, name


def test_reasoning_is_split_on_every_engine(thinker):
    from tests.scripted_model import THINK_ANSWER, THINK_REASONING

    server, model = thinker
    client = server.client()
    reply = client.chat.completions.create(model=model, messages=MSG, temperature=1.0)
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content) == (THINK_REASONING, THINK_ANSWER)
    chunks = [c for c in client.chat.completions.create(model=model, messages=MSG, stream=True)
              if c.choices]
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                   for c in chunks) == THINK_REASONING
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == THINK_ANSWER
    quick = client.chat.completions.create(  # the template's variables reach every engine
        model=model, messages=MSG, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert quick.choices[0].message.content == "Just 391."
