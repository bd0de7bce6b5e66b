#!/usr/bin/env python3
"""OpenAI compatibility check of a live server: every route and parameter
this service offers, driven with the official `openai` SDK (and `requests`
for the non-OpenAI routes); prints a pass/fail table, exits 1 on a failure.

  python test_openai_compatibility.py --base-url http://127.0.0.1:8000/v1 \\
      --model SmolLM2-135M-Instruct [--tools-model ...] [--embedding-model ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any, Callable

import openai
import pydantic
import requests

MSG = [{"role": "user", "content": "Say hello."}]
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 12}}}}}


class Point(pydantic.BaseModel):
    x: int
    y: int


def checks(client: openai.OpenAI, args: argparse.Namespace) -> dict[str, Callable[[], str]]:
    model, tools_model, embed_model = args.model, args.tools_model, args.embedding_model
    root = args.base_url.rstrip("/").removesuffix("/v1")

    def chat(**kw: Any):
        return client.chat.completions.create(model=kw.pop("model", model),
                                              messages=kw.pop("messages", MSG), **kw)

    def models() -> str:
        ids = [m.id for m in client.models.list().data]
        assert model in ids, ids
        return f"{len(ids)} models"

    def chat_plain() -> str:
        r = chat(max_tokens=8)
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        return repr(r.choices[0].message.content[:30])

    def chat_stream() -> str:
        chunks = list(chat(max_tokens=8, stream=True, stream_options={"include_usage": True}))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and
                  c.choices[0].finish_reason]
        assert len(finish) == 1 and chunks[-1].usage and not chunks[-1].choices
        assert len({c.id for c in chunks}) == 1
        return f"{len(chunks)} chunks"

    def completions() -> str:
        r = client.completions.create(model=model, prompt="Once upon", max_tokens=6)
        s = list(client.completions.create(model=model, prompt="Once upon", max_tokens=6,
                                           stream=True))
        assert r.object == "text_completion" and s[-1].choices[0].finish_reason
        return repr(r.choices[0].text[:30])

    def sampling() -> str:
        kw = dict(max_tokens=10, temperature=1.0, top_p=0.9, seed=42, presence_penalty=0.5,
                  frequency_penalty=0.5, stop=["\n\n"],
                  extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
        a, b = chat(**kw), chat(**kw)
        assert a.choices[0].message.content == b.choices[0].message.content
        return "same seed, same text"

    def n_choices() -> str:
        r = chat(max_tokens=5, n=2, temperature=1.0)
        assert [c.index for c in r.choices] == [0, 1]
        return "2 choices"

    def logprobs() -> str:
        r = chat(max_tokens=4, logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs.content
        assert lp and all(len(t.top_logprobs) == 3 for t in lp)
        c = client.completions.create(model=model, prompt="a", max_tokens=3, logprobs=2)
        assert len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens
        return f"{len(lp)} tokens"

    def json_mode() -> str:
        r = chat(max_tokens=60, temperature=0, response_format={"type": "json_object"},
                 messages=[{"role": "user", "content": "Reply with a JSON object."}])
        json.loads(r.choices[0].message.content)
        p = client.chat.completions.parse(model=model, response_format=Point, max_tokens=100,
                                          temperature=0, messages=[
                                              {"role": "user", "content": "The point x=3, y=4."}])
        assert isinstance(p.choices[0].message.parsed, Point)
        return "json_object and json_schema parse"

    def tools() -> str:
        # greedy: a sampled call may run past max_tokens (the check would say nothing then)
        r = chat(model=tools_model, tools=[TOOL], tool_choice="required", max_tokens=80,
                 temperature=0)
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.id
        json.loads(call.function.arguments)
        pieces = {}
        for chunk in chat(model=tools_model, tools=[TOOL], stream=True, max_tokens=80,
                          temperature=0,
                          tool_choice={"type": "function", "function": {"name": "get_weather"}}):
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                pieces.setdefault(tc.index, "")
                pieces[tc.index] += tc.function.arguments or ""
        json.loads(pieces[0])
        history = MSG + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        chat(model=tools_model, messages=history, tools=[TOOL], max_tokens=5)
        return f"{call.function.name}({call.function.arguments})"

    def embeddings() -> str:
        r = client.embeddings.create(model=embed_model, input=["one", "two"])
        f = client.embeddings.create(model=embed_model, input="one", encoding_format="float")
        assert len(r.data) == 2 and len(f.data[0].embedding) == len(r.data[0].embedding)
        return f"{len(f.data[0].embedding)} dimensions"

    def responses() -> str:
        r = client.responses.create(model=model, input="Say hi.", max_output_tokens=6)
        events = [e.type for e in client.responses.create(model=model, input="Say hi.",
                                                          max_output_tokens=6, stream=True)]
        assert r.output_text is not None and events[0] == "response.created"
        return f"{len(events)} events"

    def extras() -> str:
        tok = requests.post(f"{root}/tokenize", json={"model": model, "prompt": "hi"}).json()
        back = requests.post(f"{root}/detokenize", json={"model": model,
                                                         "tokens": tok["tokens"]}).json()
        gen = requests.post(f"{root}/generate", json={"model": model, "prompt": "hi",
                                                      "max_tokens": 4}).json()
        assert back["prompt"] == "hi" and gen["object"] == "generation"
        for path in ("/health", "/metrics", "/openapi.json", "/v1/system/status"):
            assert requests.get(f"{root}{path}").status_code == 200, path
        return "tokenize, detokenize, generate, health, metrics, openapi"

    def errors() -> str:
        for call, kind in ((lambda: chat(model="no-such-model"), openai.NotFoundError),
                           (lambda: chat(temperature=5), openai.BadRequestError),
                           (lambda: chat(max_tokens=10**7), openai.BadRequestError)):
            try:
                call()
            except kind as exc:
                assert set(exc.body) >= {"message", "type", "param", "code"}
            else:
                raise AssertionError(f"{kind.__name__} expected")
        return "404, 400, 400 in the OpenAI shape"

    return {"models.list": models, "chat": chat_plain, "chat stream + usage": chat_stream,
            "completions": completions, "sampling parameters + seed": sampling,
            "n > 1": n_choices, "logprobs": logprobs, "structured output": json_mode,
            "tools": tools, "embeddings": embeddings, "responses": responses,
            "other routes": extras, "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tools-model", help="a model with room for tool prompts (default: --model)")
    p.add_argument("--embedding-model", help="default: --model")
    p.add_argument("--api-key", default="compatibility-check")
    p.add_argument("-v", "--verbose", action="store_true", help="print each failure's traceback")
    args = p.parse_args()
    args.tools_model = args.tools_model or args.model
    args.embedding_model = args.embedding_model or args.model
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                           timeout=120)
    failed = 0
    print(f"{'check':<30} {'result':<6} {'time':>7}  detail")
    for name, check in checks(client, args).items():
        started = time.monotonic()
        try:
            detail, result = check(), "PASS"
        except Exception as exc:  # the table reports every failure, then the exit code
            detail, result = f"{type(exc).__name__}: {exc}"[:200], "FAIL"
            failed += 1
            if args.verbose:
                traceback.print_exc()
        print(f"{name:<30} {result:<6} {time.monotonic() - started:6.1f}s  {detail}")
    print(f"\n{len(checks(client, args)) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
