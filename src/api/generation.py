"""From a validated OpenAI request to engine requests, and from engine deltas
back to OpenAI responses and stream chunks."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

from ..core.exceptions import ClientDisconnectedError, ServiceError
from ..core.inference_engine import (GenerationRequest, InferenceEngine, RequestStream,
                                     SamplingParams, Usage)
from .schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields

KEEPALIVE_INTERVAL = 15.0  # seconds of silence before an SSE comment line
DISCONNECT_CHECK_INTERVAL = 0.5  # how often a non-streaming request checks its client


@dataclass
class Job:
    """One running request: its engine, its stream(s), and the response ids."""

    engine: InferenceEngine
    streams: list[RequestStream]
    response_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


def sampling_params(req: _SamplingFields) -> SamplingParams:
    return SamplingParams(
        temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), min_p=req.min_p,
        seed=req.seed, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
        logit_bias=dict(req.logit_bias or {}))


def _submit(engine: InferenceEngine, prompts: list[list[int]], req: _SamplingFields,
            response_id: str) -> Job:
    streams: list[RequestStream] = []
    try:
        for i, tokens in enumerate(prompts):
            streams.append(engine.submit(GenerationRequest(
                request_id=f"{response_id}-{i}", prompt_tokens=tokens,
                max_tokens=req.max_tokens, sampling=sampling_params(req), stop=req.stop_list,
                ignore_eos=req.ignore_eos)))
    except ServiceError:
        for stream in streams:
            stream.close()
        raise
    return Job(engine, streams, response_id, req.model)


def start_chat(engine: InferenceEngine, req: ChatCompletionRequest) -> Job:
    prompt = engine.render_chat([m.for_template() for m in req.messages], tools=req.tools)
    tokens = engine.tokenize(prompt, add_special=True)
    return _submit(engine, [tokens], req, f"chatcmpl-{uuid.uuid4().hex}")


def start_completion(engine: InferenceEngine, req: CompletionRequest) -> Job:
    prompts = [p if isinstance(p, list) else engine.tokenize(p, add_special=True)
               for p in req.prompts()]
    return _submit(engine, prompts, req, f"cmpl-{uuid.uuid4().hex}")


@dataclass
class _Collected:
    text: str = ""
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None


def _collect(stream: RequestStream, deadline: Optional[float],
             client_gone: Callable[[], bool]) -> _Collected:
    out = _Collected()
    parts = []
    for delta in stream.iter_deltas(deadline, idle_interval=DISCONNECT_CHECK_INTERVAL):
        if delta is None:
            if client_gone():  # leaving the loop closes the stream: the engine aborts it
                raise ClientDisconnectedError("The client closed the connection.")
            continue
        if delta.error is not None:
            raise delta.error
        parts.append(delta.text)
        if delta.final:
            out.finish_reason, out.usage = delta.finish_reason, delta.usage
    out.text = "".join(parts)
    return out


def _usage_dict(usages: list[Usage]) -> dict[str, Any]:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in usages)}}


def chat_response(job: Job, deadline: Optional[float],
                  client_gone: Callable[[], bool]) -> dict[str, Any]:
    got = _collect(job.streams[0], deadline, client_gone)
    return {
        "id": job.response_id, "object": "chat.completion", "created": job.created,
        "model": job.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": got.text},
                     "logprobs": None, "finish_reason": got.finish_reason}],
        "usage": _usage_dict([got.usage]),
    }


def completion_response(job: Job, prompts_text: list[str], echo: bool,
                        deadline: Optional[float], client_gone: Callable[[], bool]) -> dict[str, Any]:
    try:
        results = [_collect(s, deadline, client_gone) for s in job.streams]
    finally:
        for stream in job.streams:
            stream.close()
    choices = [{"index": i, "text": (prompts_text[i] if echo else "") + r.text,
                "logprobs": None, "finish_reason": r.finish_reason}
               for i, r in enumerate(results)]
    return {"id": job.response_id, "object": "text_completion", "created": job.created,
            "model": job.model, "system_fingerprint": None, "choices": choices,
            "usage": _usage_dict([r.usage for r in results])}


def sse(data: Union[dict[str, Any], str]) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                            separators=(",", ":"))
    return f"data: {payload}\n\n"


def _stream(job: Job, deadline: Optional[float], include_usage: bool, object_name: str,
            choice: Any, opening: list[dict[str, Any]]) -> Iterator[str]:
    """SSE lines for a job: `choice(index, text, finish_reason)` builds one choice."""

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        body = {"id": job.response_id, "object": object_name, "created": job.created,
                "model": job.model, "system_fingerprint": None, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return sse(body)

    usages: list[Usage] = []
    try:
        for body in opening:
            yield chunk([body])
        for index, stream in enumerate(job.streams):
            for delta in stream.iter_deltas(deadline, idle_interval=KEEPALIVE_INTERVAL):
                if delta is None:
                    yield ": keep-alive\n\n"
                    continue
                if delta.error is not None:
                    raise delta.error
                if delta.text or delta.final:
                    yield chunk([choice(index, delta.text, delta.finish_reason)])
                if delta.usage is not None:
                    usages.append(delta.usage)
        if include_usage:
            yield chunk([], _usage_dict(usages))
    except ServiceError as exc:
        yield sse(exc.to_dict())
    finally:
        for stream in job.streams:
            stream.close()  # a client that went away aborts what is still running
    yield sse("[DONE]")


def chat_stream(job: Job, deadline: Optional[float], include_usage: bool) -> Iterator[str]:
    def choice(index: int, text: str, finish: Optional[str]) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text} if text else {},
                "logprobs": None, "finish_reason": finish}

    opening = [{"index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}]
    return _stream(job, deadline, include_usage, "chat.completion.chunk", choice, opening)


def completion_stream(job: Job, prompts_text: list[str], echo: bool, deadline: Optional[float],
                      include_usage: bool) -> Iterator[str]:
    def choice(index: int, text: str, finish: Optional[str]) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    opening = [choice(i, p, None) for i, p in enumerate(prompts_text)] if echo else []
    return _stream(job, deadline, include_usage, "text_completion", choice, opening)

