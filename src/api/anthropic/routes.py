"""`POST /v1/messages` (text, tools, thinking; streamed with Anthropic's
event sequence), `POST /v1/messages/count_tokens`, and the model list in
Anthropic's shape for clients that send `anthropic-version` (the same
`/v1/models` answers OpenAI's shape to everyone else). Keys come as
`x-api-key` or a bearer token; `anthropic-version` is accepted as sent."""
from __future__ import annotations

import json
from typing import Any, Iterator, Optional

from flask import Blueprint, Request, jsonify, request

from ...core.exceptions import NotFoundError, ServiceError
from .. import errors, extensions as ext
from ..generation import Job, chat_prompt, collect_replies, job_deltas, run_stream
from ..reply import Reasoning, ReplySummary
from ..request_parsing import query_int, validate_as
from ..schemas import ChatCompletionRequest
from ..serving import event_stream, request_timeout, start_chat_job, with_model
from ..tool_calls import Arguments, CallStart, Content
from ..spec import SSE, accepts, responds
from .protocol import (CountTokensRequest, AnthropicError, MessageAnswer, MessagesRequest,
                       TokenCount)
from .translate import (chat_body, chat_messages, chat_tools, content_blocks, error_body,
                        model_info, new_message_id, render_error, stop_reason, thinking_kwargs,
                        tool_use_id, usage)

bp = Blueprint("anthropic", __name__)
BASE_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"


def claims(req: Request) -> bool:
    """The requests whose errors take Anthropic's shape: its routes, and any
    request an Anthropic client sends (its SDKs send `anthropic-version`)."""
    return req.path.startswith(BASE_PATH) or "anthropic-version" in req.headers


errors.register_error_shape(claims, render_error, AnthropicError)


@bp.before_app_request
def models_in_anthropic_shape():
    """`GET /v1/models[/{id}]` from an Anthropic client: its list (newest
    first, paged by limit / after_id / before_id) or one model."""
    if request.method != "GET" or "anthropic-version" not in request.headers:
        return None
    if request.path == MODELS_PATH:
        return jsonify(_model_page([model_info(m) for m in ext.model_manager().describe()]))
    rule = request.url_rule.rule if request.url_rule is not None else ""
    if rule == MODELS_PATH + "/<model_id:model_id>":
        return jsonify(model_info(ext.model_manager().describe(request.view_args["model_id"])[0]))
    return None


def _model_page(models: list[dict[str, Any]]) -> dict[str, Any]:
    models.sort(key=lambda m: m["created_at"], reverse=True)
    ids = [m["id"] for m in models]
    limit = query_int("limit", 20, 1, 1000)
    after, before = request.args.get("after_id"), request.args.get("before_id")
    for name, anchor in (("after_id", after), ("before_id", before)):
        if anchor is not None and anchor not in ids:
            raise NotFoundError(f"No model '{anchor}' to page from.", param=name)
    if before is not None:
        end = ids.index(before)
        page = models[max(end - limit, 0):end]
        has_more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        page = models[start:start + limit]
        has_more = start + limit < len(models)
    return {"data": page, "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None}


@bp.post("/v1/messages")
@responds(MessageAnswer, SSE)
@accepts(MessagesRequest)
def create_message(req: MessagesRequest):
    chat = validate_as(ChatCompletionRequest, chat_body(req))
    job, deadline = start_chat_job(chat, "messages")
    job.response_id = new_message_id()
    if req.stream:
        return event_stream(_events(job, deadline), job)
    (result,) = collect_replies(job, deadline)
    reply = result.reply or ReplySummary(content=result.text)
    trace = job.trace
    return jsonify({
        "id": job.response_id, "type": "message", "role": "assistant", "model": job.model,
        "content": content_blocks(reply),
        "stop_reason": "stop_sequence" if result.stop_sequence
        else stop_reason(result.finish_reason, bool(reply.calls)),
        "stop_sequence": result.stop_sequence,
        "usage": usage(trace.prompt_tokens, trace.completion_tokens, trace.cached_tokens)})


@bp.post("/v1/messages/count_tokens")
@responds(TokenCount)
@accepts(CountTokensRequest)
def count_tokens(req: CountTokensRequest):
    """The prompt's tokens as the model's template renders it, tools included."""
    chat = validate_as(ChatCompletionRequest, {
        "model": req.model, "messages": chat_messages(req), **chat_tools(req),
        **thinking_kwargs(req)})
    with ext.model_manager().acquire(with_model(chat).model, request_timeout()) as lease:
        _, _, ids = chat_prompt(lease.engine, chat)
    return jsonify({"input_tokens": len(ids)})


def _events(job: Job, deadline: float) -> Iterator[str]:
    """message_start, ping, then each content block (thinking, text,
    tool_use) started, streamed and stopped in turn, message_delta with the
    stop reason and usage, message_stop."""
    parser = job.new_parser() if job.new_parser else None

    def event(kind: str, **body: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **body}, ensure_ascii=False)}\n\n"

    state: dict[str, Any] = {"blocks": 0, "open": None}  # blocks started; the open one's kind
    pending_space: list[str] = []

    def close() -> Iterator[str]:
        if state["open"] is not None:
            yield event("content_block_stop", index=state["blocks"] - 1)
            state["open"] = None

    def start(kind: str, block: dict[str, Any]) -> Iterator[str]:
        yield from close()
        yield event("content_block_start", index=state["blocks"], content_block=block)
        state["blocks"] += 1
        state["open"] = kind

    def delta(body: dict[str, Any]) -> str:
        return event("content_block_delta", index=state["blocks"] - 1, delta=body)

    def on_event(e: Any) -> Iterator[str]:
        if isinstance(e, Reasoning):
            if state["open"] != "thinking":
                yield from start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            yield delta({"type": "thinking_delta", "thinking": e.text})
        elif isinstance(e, Content):
            if not e.text.strip() and state["open"] != "text":
                pending_space.append(e.text)  # sent only before more text
                return
            text = "".join(pending_space) + e.text
            pending_space.clear()
            if state["open"] != "text":
                yield from start("text", {"type": "text", "text": ""})
            yield delta({"type": "text_delta", "text": text})
        elif isinstance(e, CallStart):
            yield from start("tool_use", {"type": "tool_use", "id": tool_use_id(e.id),
                                          "name": e.name, "input": {}})
        elif isinstance(e, Arguments):
            yield delta({"type": "input_json_delta", "partial_json": e.text})

    def lines() -> Iterator[str]:
        yield event("message_start", message={
            "id": job.response_id, "type": "message", "role": "assistant", "model": job.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage(job.prompt_tokens, 0, 0)})
        yield event("ping")
        finish: Optional[str] = None
        stop_sequence: Optional[str] = None
        for _, d in job_deltas(job, deadline):
            if d is None:
                yield event("ping")
                continue
            events: list[Any] = [Content(d.text)] if parser is None and d.text else []
            if parser is not None:
                events = parser.feed(d.text, d.token_count) + (parser.finish() if d.final else [])
            for e in events:
                yield from on_event(e)
            if d.final:
                finish, stop_sequence = d.finish_reason, d.stop_sequence
        if state["blocks"] == 0:  # an empty answer is still a text block
            yield from start("text", {"type": "text", "text": ""})
        yield from close()
        calls = bool(parser and parser.calls)
        yield event("message_delta", delta={
            "stop_reason": "stop_sequence" if stop_sequence else stop_reason(finish, calls),
            "stop_sequence": stop_sequence},
            usage={"output_tokens": job.trace.completion_tokens})
        yield event("message_stop")

    def error_line(exc: ServiceError) -> str:
        return event("error", error=error_body(exc.status_code, exc.message)["error"])

    return run_stream(job, lines(), error_line)
