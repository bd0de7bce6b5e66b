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


def _name(e: dict[str, Any], ids: bool) -> str:
    """A token as the client reads it: its text, or (vLLM's
    return_tokens_as_token_ids) `token_id:<id>`, exact where texts are not."""
    return f"token_id:{e['token_id']}" if ids else e["token"]


def token_logprobs(entries: list[dict[str, Any]], ids: bool = False) -> list[dict[str, Any]]:
    """Engine logprobs as OpenAI lists them per token (chat and the Responses API)."""
    def one(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": _name(e, ids), "logprob": e["logprob"], "bytes": e["bytes"]}

    return [{**one(e), "top_logprobs": [one(t) for t in e["top"]]} for e in entries]


def _chat_logprobs(entries: Optional[list[dict[str, Any]]],
                   ids: bool = False) -> Optional[dict[str, Any]]:
    if entries is None:
        return None
    return {"content": token_logprobs(entries, ids), "refusal": None}


def _completion_logprobs(entries: Optional[list[dict[str, Any]]], offset: int,
                         ids: bool = False) -> Optional[dict[str, Any]]:
    """The legacy completions shape; `offset` is where the first token's text starts."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [_name(e, ids) for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            # a prompt's first token has no alternatives: nothing came before it
            "top_logprobs": [None if e["logprob"] is None else _by_text(e["top"], ids)
                             for e in entries],
            "text_offset": offsets}


def _echoed_logprobs(prompt: Optional[list[dict[str, Any]]],
                     generated: Optional[list[dict[str, Any]]],
                     prefix_length: int, ids: bool) -> Optional[dict[str, Any]]:
    """echo with logprobs: the prompt's tokens (offsets from 0), then the
    generated ones (offsets from the end of the echoed prompt text)."""
    head = _completion_logprobs(prompt or [], 0, ids)
    tail = _completion_logprobs(generated or [], prefix_length, ids)
    return {key: head[key] + tail[key] for key in head}


def vllm_prompt_logprobs(entries: Optional[list[dict[str, Any]]]
                         ) -> Optional[list[Optional[dict[str, Any]]]]:
    """vLLM's `prompt_logprobs`: per prompt token, None for the first, then
    {token id: {logprob, rank, decoded_token}} for the token and its alternatives."""
    if entries is None:
        return None

    def position(e: dict[str, Any]) -> Optional[dict[str, Any]]:
        if e["logprob"] is None:
            return None
        return {str(t["token_id"]): {"logprob": t["logprob"], "rank": t["rank"],
                                     "decoded_token": t["token"]} for t in [e, *e["top"]]}

    return [position(e) for e in entries]


def _by_text(top: list[dict[str, Any]], ids: bool) -> dict[str, float]:
    # tokens that read alike (bytes of a split character) share a key: keep the likeliest
    out: dict[str, float] = {}
    for t in top:
        out.setdefault(_name(t, ids), t["logprob"])
    return out


def chat_response(job: Job, req: ChatCompletionRequest,
                  deadline: Optional[float]) -> dict[str, Any]:
    results = collect_replies(job, deadline)
    want_logprobs, ids = req.logprobs_wanted is not None, req.return_tokens_as_token_ids
    choices = []
    for i, r in enumerate(results):
        message, finish = chat_message(r.reply, r.text, r.finish_reason)
        choices.append({"index": i, "message": message, "finish_reason": finish,
                        "logprobs": _chat_logprobs(r.logprobs if want_logprobs else None, ids)})
    body = {"id": job.response_id, "object": "chat.completion", "created": job.created,
            "model": job.model, "system_fingerprint": None, "choices": choices,
            "usage": usage_dict(job)}
    if req.prompt_logprobs is not None:  # vLLM: one prompt for all choices, at the top
        body["prompt_logprobs"] = vllm_prompt_logprobs(results[0].prompt_logprobs)
    return body


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
    want_logprobs, ids = req.logprobs_wanted is not None, req.return_tokens_as_token_ids
    choices = []
    for i, r in enumerate(results):
        prefix = prompts_text[i // req.n] if req.echo else ""
        generated = r.logprobs if want_logprobs else None
        logprobs = (_echoed_logprobs(r.prompt_logprobs, generated, len(prefix), ids)
                    if req.echo and want_logprobs
                    else _completion_logprobs(generated, len(prefix), ids))
        choice = {"index": i, "text": prefix + r.text, "finish_reason": r.finish_reason,
                  "logprobs": logprobs}
        if req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(r.prompt_logprobs)
        choices.append(choice)
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
    want_logprobs, ids = req.logprobs_wanted is not None, req.return_tokens_as_token_ids
    parsers = ({i: job.new_parser() for i in range(len(job.streams))}
               if job.new_parser is not None else {})

    def choice(index: int, delta: dict[str, Any], finish: Optional[str] = None,
               logprobs: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "finish_reason": finish,
                "logprobs": _chat_logprobs((logprobs or []) if want_logprobs else None, ids)}

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
            out[0]["logprobs"] = _chat_logprobs(d.logprobs, ids)
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
    want_logprobs, ids = req.logprobs_wanted is not None, req.return_tokens_as_token_ids
    offsets = {i: len(prompts_text[i // req.n]) if req.echo else 0
               for i in range(len(job.streams))}

    # echo with logprobs: the prompt is echoed when its logprobs come, with the first delta
    scored_echo = req.echo and want_logprobs

    def choices(index: int, d: GenerationDelta) -> list[dict[str, Any]]:
        out = []
        if scored_echo and d.prompt_logprobs is not None:
            out.append({"index": index, "text": prompts_text[index // req.n],
                        "logprobs": _completion_logprobs(d.prompt_logprobs, 0, ids),
                        "finish_reason": None})
        if not (d.text or d.final or d.logprobs):
            return out
        formatted = _completion_logprobs((d.logprobs or []) if want_logprobs else None,
                                         offsets[index], ids)
        offsets[index] += sum(len(e["token"]) for e in d.logprobs or ())
        return out + [{"index": index, "text": d.text, "logprobs": formatted,
                       "finish_reason": d.finish_reason}]

    opening = ([{"index": i, "text": prompts_text[i // req.n], "logprobs": None,
                 "finish_reason": None} for i in range(len(job.streams))]
               if req.echo and not scored_echo else [])
    return _stream(job, deadline, req.include_usage, "text_completion", choices, opening)
