"""The OpenAI wire shapes of a job: chat completion and completion objects,
their stream chunks (SSE), usage and logprobs."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Optional, Union

from ...core.inference_engine import GenerationDelta
from ..generation import Job, collect_replies, job_deltas, run_stream
from ..reply import Reasoning, ReplyEvent, ReplySummary
from ..schemas import ChatCompletionRequest, CompletionRequest
from ..tool_calls import CallStart, Content, message_tool_calls


def usage_dict(job: Job) -> dict[str, Any]:
    trace = job.trace
    prompt, completion = trace.prompt_tokens, trace.completion_tokens
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": trace.cached_tokens}}
    if job.new_parser is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": job.reasoning_tokens}
    return usage


def token_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Engine logprobs as OpenAI lists them per token (chat and the Responses API)."""
    def one(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}

    return [{**one(e), "top_logprobs": [one(t) for t in e["top"]]} for e in entries]


def _chat_logprobs(entries: Optional[list[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    if entries is None:
        return None
    return {"content": token_logprobs(entries), "refusal": None}


def _completion_logprobs(entries: Optional[list[dict[str, Any]]],
                         offset: int) -> Optional[dict[str, Any]]:
    """The legacy completions shape; `offset` is where the first token's text starts."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [_by_text(e["top"]) for e in entries],
            "text_offset": offsets}


def _by_text(top: list[dict[str, Any]]) -> dict[str, float]:
    # tokens that read alike (bytes of a split character) share a key: keep the likeliest
    out: dict[str, float] = {}
    for t in top:
        out.setdefault(t["token"], t["logprob"])
    return out


def chat_response(job: Job, req: ChatCompletionRequest,
                  deadline: Optional[float]) -> dict[str, Any]:
    results = collect_replies(job, deadline)
    want_logprobs = req.logprobs_wanted is not None
    choices = []
    for i, r in enumerate(results):
        message, finish = chat_message(r.reply, r.text, r.finish_reason)
        choices.append({"index": i, "message": message, "finish_reason": finish,
                        "logprobs": _chat_logprobs(r.logprobs if want_logprobs else None)})
    return {"id": job.response_id, "object": "chat.completion", "created": job.created,
            "model": job.model, "system_fingerprint": None, "choices": choices,
            "usage": usage_dict(job)}


def chat_message(reply: Optional[ReplySummary], text: str,
                 finish: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """The assistant message of a whole reply, and its finish reason."""
    if reply is None:
        return {"role": "assistant", "content": text}, finish
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.calls:
        message["content"] = reply.content.strip() or None
        message["tool_calls"] = message_tool_calls(reply.calls)
        finish = "tool_calls" if finish == "stop" else finish
    return message, finish


def completion_response(job: Job, req: CompletionRequest, prompts_text: list[str],
                        deadline: Optional[float]) -> dict[str, Any]:
    results = collect_replies(job, deadline)
    want_logprobs = req.logprobs_wanted is not None
    choices = []
    for i, r in enumerate(results):
        prefix = prompts_text[i // req.n] if req.echo else ""
        choices.append({"index": i, "text": prefix + r.text, "finish_reason": r.finish_reason,
                        "logprobs": _completion_logprobs(r.logprobs if want_logprobs else None,
                                                         len(prefix))})
    return {"id": job.response_id, "object": "text_completion", "created": job.created,
            "model": job.model, "system_fingerprint": None, "choices": choices,
            "usage": usage_dict(job)}


def sse(data: Union[dict[str, Any], str]) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                            separators=(",", ":"))
    return f"data: {payload}\n\n"


def _stream(job: Job, deadline: Optional[float], include_usage: bool, object_name: str,
            choices: Callable[[int, GenerationDelta], list[dict[str, Any]]],
            opening: list[dict[str, Any]]) -> Iterator[str]:
    """SSE lines for a job: `choices(index, delta)` turns a delta into the
    choices of zero or more chunks. Choices stream one after the other."""

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        body = {"id": job.response_id, "object": object_name, "created": job.created,
                "model": job.model, "system_fingerprint": None, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return sse(body)

    def lines() -> Iterator[str]:
        for body in opening:
            yield chunk([body])
        for index, delta in job_deltas(job, deadline):
            if delta is None:
                yield ": keep-alive\n\n"
                continue
            for body in choices(index, delta):
                yield chunk([body])
        if include_usage:
            yield chunk([], usage_dict(job))

    return run_stream(job, lines(), lambda exc: sse(exc.to_dict()), sse("[DONE]"))


def chat_stream(job: Job, req: ChatCompletionRequest, deadline: Optional[float]) -> Iterator[str]:
    want_logprobs = req.logprobs_wanted is not None
    parsers = ({i: job.new_parser() for i in range(len(job.streams))}
               if job.new_parser is not None else {})

    def choice(index: int, delta: dict[str, Any], finish: Optional[str] = None,
               logprobs: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "finish_reason": finish,
                "logprobs": _chat_logprobs((logprobs or []) if want_logprobs else None)}

    def choices(index: int, d: GenerationDelta) -> list[dict[str, Any]]:
        parser = parsers.get(index)
        if parser is None:
            if not (d.text or d.final or d.logprobs):
                return []
            return [choice(index, {"content": d.text} if d.text else {}, d.finish_reason,
                           d.logprobs)]
        out = [choice(index, _reply_delta(e)) for e in parser.feed(d.text, d.token_count)]
        if d.final:
            out += [choice(index, _reply_delta(e)) for e in parser.finish()]
            job.reasoning_tokens += parser.reasoning_tokens
            finish = "tool_calls" if parser.calls and d.finish_reason == "stop" else d.finish_reason
            out.append(choice(index, {}, finish))
        if d.logprobs and want_logprobs:  # they ride on the delta's first chunk
            out = out or [choice(index, {})]
            out[0]["logprobs"] = _chat_logprobs(d.logprobs)
        return out

    opening = [choice(i, {"role": "assistant", "content": ""}) for i in range(len(job.streams))]
    for body in opening:
        body["logprobs"] = None
    return _stream(job, deadline, req.include_usage, "chat.completion.chunk", choices, opening)


def _reply_delta(event: ReplyEvent) -> dict[str, Any]:
    if isinstance(event, Reasoning):
        return {"reasoning_content": event.text}
    if isinstance(event, Content):
        return {"content": event.text}
    if isinstance(event, CallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


def completion_stream(job: Job, req: CompletionRequest, prompts_text: list[str],
                      deadline: Optional[float]) -> Iterator[str]:
    want_logprobs = req.logprobs_wanted is not None
    offsets = {i: len(prompts_text[i // req.n]) if req.echo else 0
               for i in range(len(job.streams))}

    def choices(index: int, d: GenerationDelta) -> list[dict[str, Any]]:
        if not (d.text or d.final or d.logprobs):
            return []
        formatted = _completion_logprobs((d.logprobs or []) if want_logprobs else None,
                                         offsets[index])
        offsets[index] += sum(len(e["token"]) for e in d.logprobs or ())
        return [{"index": index, "text": d.text, "logprobs": formatted,
                 "finish_reason": d.finish_reason}]

    opening = ([{"index": i, "text": prompts_text[i // req.n], "logprobs": None,
                 "finish_reason": None} for i in range(len(job.streams))] if req.echo else [])
    return _stream(job, deadline, req.include_usage, "text_completion", choices, opening)
