"""OpenAI's Responses API: `POST /v1/responses` (function tools, reasoning
items, structured output, streaming with the API's typed events), and the
stored responses: `GET` / `DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items`, with `previous_response_id` chaining.
A stored response is visible only to the API key that made it."""
from __future__ import annotations

import json
from typing import Any, Iterator, Optional

from flask import Blueprint, jsonify, request

from ...core.exceptions import InvalidRequestError, NotFoundError, ServiceError
from .. import extensions as ext
from ..generation import Job, collect_replies, job_deltas, run_stream
from ..middleware.auth import key_owner
from ..reply import Reasoning, ReplySummary
from ..request_parsing import query_int, validate_as
from ..schemas import ChatCompletionRequest
from ..serving import event_stream, start_chat_job
from ..spec import SSE, accepts, responds
from ..tool_calls import Arguments, CallStart, Content
from .render import token_logprobs, usage_dict
from .responses_protocol import (INCLUDE_LOGPROBS, DeletedResponse, InputItemList,
                                 ResponseObject, ResponsesRequest, chat_messages,
                                 function_call_item, message_output, new_id, output_items,
                                 reasoning_item)

bp = Blueprint("responses", __name__)


class _Turn:
    """One create request: the request, the conversation it continues, and
    the chat request the serving core runs for it."""

    def __init__(self, req: ResponsesRequest):
        self.req = req
        self.owner = key_owner()
        inherited: list[dict[str, Any]] = []
        if req.previous_response_id:
            previous = ext.response_store().get(self.owner, req.previous_response_id)
            if previous is None:
                raise NotFoundError(f"Previous response with id '{req.previous_response_id}' "
                                    f"not found.", param="previous_response_id")
            inherited = previous.conversation + previous.response["output"]
        self.conversation = inherited + req.input_items()
        self.chat = self._chat_request()

    def _chat_request(self) -> ChatCompletionRequest:
        req = self.req
        tools, choice = req.chat_tools()
        body: dict[str, Any] = {
            "model": req.model, "stream": req.stream, "max_tokens": req.max_output_tokens,
            "messages": chat_messages(self.conversation, req.instructions),
            "parallel_tool_calls": req.parallel_tool_calls, "max_tool_calls": req.max_tool_calls,
            "response_format": req.text.format.response_format()}
        if tools:
            body["tools"], body["tool_choice"] = tools, choice
        elif choice not in ("auto", "none"):
            raise InvalidRequestError("tool_choice needs function tools.", param="tool_choice")
        if INCLUDE_LOGPROBS in req.include or req.top_logprobs:
            body["logprobs"], body["top_logprobs"] = True, req.top_logprobs or 0
        for key in ("temperature", "top_p", "user", "seed", "top_k", "min_p",
                    "repetition_penalty", "chat_template_kwargs"):
            if getattr(req, key) is not None:
                body[key] = getattr(req, key)
        if req.reasoning.effort is not None:
            body["reasoning_effort"] = req.reasoning.effort
        return validate_as(ChatCompletionRequest, body)

    # the response object ------------------------------------------------------------------
    def response(self, job: Job, status: str, output: list[dict[str, Any]],
                 incomplete: bool = False) -> dict[str, Any]:
        req = self.req
        body = {
            "id": job.response_id, "object": "response", "created_at": job.created,
            "status": "incomplete" if incomplete else status, "background": False,
            "error": None, "model": job.model, "output": output,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls, "metadata": req.metadata or {},
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.reasoning.effort, "summary": req.reasoning.summary},
            "service_tier": "default", "store": req.store,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": req.text.format.echo(), "verbosity": req.text.verbosity or "medium"},
            "tool_choice": req.tool_choice, "tools": req.tools_echo(),
            "top_logprobs": req.top_logprobs or 0,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": req.truncation, "user": req.user, "usage": None}
        if status != "in_progress":
            usage = usage_dict(job)
            body["usage"] = {
                "input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
                "input_tokens_details": usage["prompt_tokens_details"],
                "output_tokens_details": {"reasoning_tokens": job.reasoning_tokens}}
        return body

    def keep(self, response: dict[str, Any]) -> None:
        if self.req.store:
            ext.response_store().save(self.owner, response, self.conversation)

    def want_logprobs(self) -> bool:
        return self.chat.logprobs


@bp.post("/v1/responses")
@bp.post("/responses")
@responds(ResponseObject, SSE)
@accepts(ResponsesRequest)
def create_response(req: ResponsesRequest):
    turn = _Turn(req)
    job, deadline = start_chat_job(turn.chat, "responses", truncate=turn.req.truncation == "auto")
    job.response_id = new_id("resp")
    if turn.chat.stream:
        return event_stream(_events(turn, job, deadline), job)
    (reply,) = collect_replies(job, deadline)
    complete = reply.finish_reason != "length"
    logprobs = token_logprobs(reply.answer_logprobs) if turn.want_logprobs() else None
    summary = reply.reply or ReplySummary(content=reply.text)
    response = turn.response(job, "completed", output_items(summary, complete, logprobs),
                             incomplete=not complete)
    turn.keep(response)
    return jsonify(response)


def _stored(response_id: str):
    found = ext.response_store().get(key_owner(), response_id)
    if found is None:
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return found


@bp.get("/v1/responses/<response_id>")
@bp.get("/responses/<response_id>")
@responds(ResponseObject)
def retrieve_response(response_id: str):
    if request.args.get("stream", "false").lower() == "true":
        raise InvalidRequestError("Only background responses can be streamed again; this "
                                  "server answers every response at once.", param="stream")
    return jsonify(_stored(response_id).response)


@bp.delete("/v1/responses/<response_id>")
@bp.delete("/responses/<response_id>")
@responds(DeletedResponse)
def delete_response(response_id: str):
    if not ext.response_store().delete(key_owner(), response_id):
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return jsonify({"id": response_id, "object": "response", "deleted": True})


@bp.get("/v1/responses/<response_id>/input_items")
@bp.get("/responses/<response_id>/input_items")
@responds(InputItemList)
def list_input_items(response_id: str):
    """The items the response was generated from (the chained ones too),
    newest first unless order=asc, in pages of `limit` after/before an id."""
    items = list(_stored(response_id).conversation)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be 'asc' or 'desc'.", param="order")
    limit = query_int("limit", 20, 1, 100)
    if order == "desc":
        items.reverse()
    for cursor, keep_after in (("after", True), ("before", False)):
        mark = request.args.get(cursor)
        if mark is None:
            continue
        at = next((i for i, item in enumerate(items) if item["id"] == mark), None)
        if at is None:
            raise InvalidRequestError(f"No input item with id '{mark}'.", param=cursor)
        items = items[at + 1:] if keep_after else items[:at]
    page = items[:limit]
    return jsonify({"object": "list", "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(items) > limit})


def _events(turn: _Turn, job: Job, deadline: float) -> Iterator[str]:
    """The typed events of a streamed response: each output item is added
    when its first text arrives, streamed, and done before the next one."""
    sequence = iter(range(1 << 30))
    want_logprobs = turn.want_logprobs()
    parser = job.new_parser() if job.new_parser else None

    def event(kind: str, **body: Any) -> str:
        payload = {"type": kind, "sequence_number": next(sequence), **body}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    output: list[dict[str, Any]] = []  # items done
    open_item: dict[str, Any] = {}  # the item being streamed: its kind, id, text

    def close(status: str = "completed") -> Iterator[str]:
        if not open_item:
            return
        kind, item_id, text = open_item["kind"], open_item["id"], "".join(open_item["text"])
        at = dict(output_index=len(output), item_id=item_id)
        if kind == "reasoning":
            item = reasoning_item(text, item_id)
            item["status"] = status
            yield event("response.reasoning_text.done", **at, content_index=0, text=text)
            yield event("response.content_part.done", **at, content_index=0,
                        part={"type": "reasoning_text", "text": text})
        elif kind == "message":
            item = message_output(item_id, text, open_item["logprobs"], status)
            yield event("response.output_text.done", **at, content_index=0, text=text,
                        logprobs=open_item["logprobs"])
            yield event("response.content_part.done", **at, content_index=0,
                        part=item["content"][0])
        else:
            item = function_call_item(item_id, open_item["call_id"], open_item["name"], text,
                                      status)
            yield event("response.function_call_arguments.done", **at, arguments=text,
                        name=open_item["name"])
        yield event("response.output_item.done", output_index=len(output), item=item)
        output.append(item)
        open_item.clear()

    def start(kind: str, item_id: str, **extra: Any) -> Iterator[str]:
        yield from close()
        open_item.update(kind=kind, id=item_id, text=[], logprobs=[], **extra)
        at = dict(output_index=len(output), item_id=item_id)
        if kind == "reasoning":
            item = {**reasoning_item("", item_id), "content": [], "status": "in_progress"}
            yield event("response.output_item.added", output_index=len(output), item=item)
            yield event("response.content_part.added", **at, content_index=0,
                        part={"type": "reasoning_text", "text": ""})
        elif kind == "message":
            item = {**message_output(item_id, "", None, "in_progress"), "content": []}
            yield event("response.output_item.added", output_index=len(output), item=item)
            yield event("response.content_part.added", **at, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": [],
                              "logprobs": []})
        else:
            item = function_call_item(item_id, extra["call_id"], extra["name"], "", "in_progress")
            yield event("response.output_item.added", output_index=len(output), item=item)

    pending_space: list[str] = []  # blank answer text: sent only before more text

    def on_event(e: Any, logprobs: list[dict[str, Any]]) -> Iterator[str]:
        at = lambda: dict(output_index=len(output), item_id=open_item["id"])  # noqa: E731
        if isinstance(e, Reasoning):
            if open_item.get("kind") != "reasoning":
                yield from start("reasoning", new_id("rs"))
            open_item["text"].append(e.text)
            yield event("response.reasoning_text.delta", **at(), content_index=0, delta=e.text)
        elif isinstance(e, Content):
            if not e.text.strip() and open_item.get("kind") != "message":
                pending_space.append(e.text)
                return
            text = "".join(pending_space) + e.text
            pending_space.clear()
            if open_item.get("kind") != "message":
                yield from start("message", new_id("msg"))
            open_item["text"].append(text)
            entries = token_logprobs(logprobs) if want_logprobs else []
            open_item["logprobs"] += entries
            yield event("response.output_text.delta", **at(), content_index=0, delta=text,
                        logprobs=entries)
        elif isinstance(e, CallStart):
            yield from start("function_call", new_id("fc"), call_id=e.id, name=e.name)
        elif isinstance(e, Arguments):
            open_item["text"].append(e.text)
            yield event("response.function_call_arguments.delta", **at(), delta=e.text)

    def lines() -> Iterator[str]:
        opening = turn.response(job, "in_progress", [])
        yield event("response.created", response=opening)
        yield event("response.in_progress", response=opening)
        finish: Optional[str] = None
        for _, delta in job_deltas(job, deadline):
            if delta is None:
                yield ": keep-alive\n\n"
                continue
            if parser is None:
                events: list[Any] = [Content(delta.text)] if delta.text else []
            else:
                events = parser.feed(delta.text, delta.token_count)
                if delta.final:
                    events += parser.finish()
            for e in events:
                yield from on_event(e, delta.logprobs or [])
            finish = delta.finish_reason or finish
        if parser is not None:
            job.reasoning_tokens = parser.reasoning_tokens
        complete = finish != "length"
        if not output and not open_item:  # an empty answer is still a message
            yield from start("message", new_id("msg"))
        yield from close("completed" if complete else "incomplete")
        final = turn.response(job, "completed", output, incomplete=not complete)
        turn.keep(final)
        yield event("response.completed" if complete else "response.incomplete", response=final)

    def error_line(exc: ServiceError) -> str:
        return event("error", code=exc.code, message=exc.message, param=exc.param)

    return run_stream(job, lines(), error_line)
