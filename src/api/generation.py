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
from ..core.model_manager import ModelLease
from .request_trace import RequestTrace
from .schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields

KEEPALIVE_INTERVAL = 15.0  # seconds of silence before an SSE comment line
DISCONNECT_CHECK_INTERVAL = 0.5  # how often a non-streaming request checks its client


@dataclass
class Job:
    """One running request: its lease on the model, its stream(s), its trace
    and the response ids. `close` ends it once: streams, lease, metrics."""

    lease: ModelLease
    streams: list[RequestStream]
    response_id: str
    model: str
    trace: RequestTrace
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def engine(self) -> InferenceEngine:
        return self.lease.engine

    def close(self, status: int) -> None:
        for stream in self.streams:
            stream.close()  # a client that went away aborts what is still running
        self.lease.release()
        self.trace.finish(status)


def sampling_params(req: _SamplingFields) -> SamplingParams:
    return SamplingParams(
        temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), min_p=req.min_p,
        seed=req.seed, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
        logit_bias=dict(req.logit_bias or {}))


def _submit(lease: ModelLease, prompts: list[list[int]], req: _SamplingFields,
            response_id: str, trace: RequestTrace) -> Job:
    job = Job(lease, [], response_id, req.model, trace)
    try:
        for i, tokens in enumerate(prompts):
            job.streams.append(lease.engine.submit(GenerationRequest(
                request_id=f"{response_id}-{i}", prompt_tokens=tokens,
                max_tokens=req.max_tokens, sampling=sampling_params(req), stop=req.stop_list,
                ignore_eos=req.ignore_eos)))
    except BaseException as exc:
        job.close(getattr(exc, "status_code", 500))
        raise
    return job


def _prompt_tokens(lease: ModelLease, trace: RequestTrace,
                   make: Callable[[InferenceEngine], list[list[int]]]) -> list[list[int]]:
    try:
        return make(lease.engine)
    except BaseException as exc:  # a bad prompt ends the request before the engine sees it
        lease.release()
        trace.finish(getattr(exc, "status_code", 500))
        raise


def start_chat(lease: ModelLease, req: ChatCompletionRequest, trace: RequestTrace) -> Job:
    """Render, tokenize and submit a chat request; the job owns the lease from here."""
    def tokens(engine: InferenceEngine) -> list[list[int]]:
        prompt = engine.render_chat([m.for_template() for m in req.messages], tools=req.tools)
        return [engine.tokenize(prompt, add_special=True)]

    return _submit(lease, _prompt_tokens(lease, trace, tokens), req,
                   f"chatcmpl-{uuid.uuid4().hex}", trace)


def start_completion(lease: ModelLease, req: CompletionRequest, trace: RequestTrace) -> Job:
    def tokens(engine: InferenceEngine) -> list[list[int]]:
        return [p if isinstance(p, list) else engine.tokenize(p, add_special=True)
                for p in req.prompts()]

    return _submit(lease, _prompt_tokens(lease, trace, tokens), req,
                   f"cmpl-{uuid.uuid4().hex}", trace)


@dataclass
class _Collected:
    text: str = ""
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None


def _collect(stream: RequestStream, deadline: Optional[float],
             client_gone: Callable[[], bool], trace: RequestTrace) -> _Collected:
    out = _Collected()
    parts = []
    for delta in stream.iter_deltas(deadline, idle_interval=DISCONNECT_CHECK_INTERVAL):
        if delta is None:
            if client_gone():  # leaving the loop closes the stream: the engine aborts it
                raise ClientDisconnectedError("The client closed the connection.")
            continue
        if delta.error is not None:
            raise delta.error
        if delta.token_count:
            trace.first_token()
        parts.append(delta.text)
        if delta.final:
            out.finish_reason, out.usage = delta.finish_reason, delta.usage
            trace.add_usage(delta.usage)
    out.text = "".join(parts)
    return out


def _collect_all(job: Job, deadline: Optional[float],
                 client_gone: Callable[[], bool]) -> list[_Collected]:
    status = 200
    try:
        return [_collect(s, deadline, client_gone, job.trace) for s in job.streams]
    except ServiceError as exc:
        status = exc.status_code
        raise
    except BaseException:
        status = 500
        raise
    finally:
        job.close(status)


def _usage_dict(usages: list[Usage]) -> dict[str, Any]:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in usages)}}


def chat_response(job: Job, deadline: Optional[float],
                  client_gone: Callable[[], bool]) -> dict[str, Any]:
    got = _collect_all(job, deadline, client_gone)[0]
    return {
        "id": job.response_id, "object": "chat.completion", "created": job.created,
        "model": job.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": got.text},
                     "logprobs": None, "finish_reason": got.finish_reason}],
        "usage": _usage_dict([got.usage]),
    }


def completion_response(job: Job, prompts_text: list[str], echo: bool,
                        deadline: Optional[float], client_gone: Callable[[], bool]) -> dict[str, Any]:
    results = _collect_all(job, deadline, client_gone)
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

    trace = job.trace
    status = ClientDisconnectedError.status_code  # unless the stream runs to its end
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
                if delta.token_count:
                    trace.first_token()
                if delta.text or delta.final:
                    yield chunk([choice(index, delta.text, delta.finish_reason)])
                trace.add_usage(delta.usage)
        if include_usage:
            yield chunk([], _usage_dict(trace.usages))
        status = 200
    except ServiceError as exc:
        status = exc.status_code
        job.close(status)
        yield sse(exc.to_dict())
    finally:
        job.close(status)
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

