"""OpenAI's Responses API, stateless (as vLLM, llama-server and Ollama offer
it): `input` text or messages plus `instructions` become a chat; the reply
is one output message. Streams send the API's typed events, from
`response.created` to `response.completed`."""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterator, Literal, Optional, Union

from flask import Blueprint, jsonify
from pydantic import Field

from ...core.exceptions import InvalidRequestError, ServiceError
from ..generation import Job, chat_response, job_deltas, run_stream
from ..request_parsing import parse_body, validate_as
from ..schemas import ChatCompletionRequest, _Lenient
from .openai_compat import event_stream, start_chat_job

bp = Blueprint("responses", __name__)


class InputPart(_Lenient):
    type: str
    text: str = ""


class InputMessage(_Lenient):
    type: Literal["message"] = "message"
    role: str
    content: Optional[Union[str, list[InputPart]]] = None

    def chat_message(self, index: int) -> dict[str, Any]:
        if not isinstance(self.content, list):
            return {"role": self.role, "content": self.content or ""}
        for part in self.content:
            if part.type not in ("input_text", "output_text", "text"):
                raise InvalidRequestError(f"Content parts of type '{part.type}' are not "
                                          f"supported; send text.", param=f"input.{index}")
        return {"role": self.role, "content": "".join(part.text for part in self.content)}


class ResponsesRequest(_Lenient):
    model: str = ""  # empty: the default model
    input: Union[str, list[InputMessage]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stream: bool = False
    text: Optional[dict[str, Any]] = None
    previous_response_id: Optional[str] = None
    tools: Optional[list[Any]] = None
    user: Optional[str] = None

    def chat_request(self) -> ChatCompletionRequest:
        if self.previous_response_id:
            raise InvalidRequestError("This server keeps no responses: send the whole "
                                      "conversation in `input` instead of previous_response_id.",
                                      param="previous_response_id")
        if self.tools:
            raise InvalidRequestError("Tools are served on /v1/chat/completions; the Responses "
                                      "API here answers text only.", param="tools")
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
        else:
            messages += [item.chat_message(i) for i, item in enumerate(self.input)]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream,
                                "max_tokens": self.max_output_tokens}
        for key in ("temperature", "top_p", "user"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        fmt = (self.text or {}).get("format")
        if fmt and fmt.get("type") == "json_schema":  # the Responses API flattens the schema
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name", "response"), "schema": fmt.get("schema", {}),
                "strict": fmt.get("strict")}}
        elif fmt:
            body["response_format"] = {"type": fmt.get("type")}
        return validate_as(ChatCompletionRequest, body)


@bp.post("/v1/responses")
@bp.post("/responses")
def create_response():
    req = parse_body(ResponsesRequest)
    chat = req.chat_request()
    job, deadline = start_chat_job(chat, "responses")
    job.response_id = f"resp_{uuid.uuid4().hex}"
    if chat.stream:
        return event_stream(_events(job, req, deadline), job)
    reply = chat_response(job, chat, deadline)
    choice = reply["choices"][0]
    return jsonify(_response_object(job, req, choice["message"]["content"] or "",
                                    choice["finish_reason"], "completed"))


def _response_object(job: Job, req: ResponsesRequest, text: str, finish: Optional[str],
                     status: str, message_id: str = "") -> dict[str, Any]:
    incomplete = finish == "length"
    trace = job.trace
    output = [{"type": "message", "id": message_id or f"msg_{job.response_id[5:]}",
               "status": "incomplete" if incomplete else status, "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {
        "id": job.response_id, "object": "response", "created_at": job.created,
        "status": "incomplete" if incomplete and status == "completed" else status,
        "model": job.model, "output": output if status != "in_progress" else [],
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "error": None,
        "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
        "previous_response_id": None, "store": False,
        "text": req.text or {"format": {"type": "text"}},
        "usage": {"input_tokens": trace.prompt_tokens, "output_tokens": trace.completion_tokens,
                  "total_tokens": trace.prompt_tokens + trace.completion_tokens,
                  "input_tokens_details": {"cached_tokens": trace.cached_tokens},
                  "output_tokens_details": {"reasoning_tokens": 0}}
        if status != "in_progress" else None,
    }


def _events(job: Job, req: ResponsesRequest, deadline: float) -> Iterator[str]:
    sequence = iter(range(1 << 30))
    message_id = f"msg_{job.response_id[5:]}"

    def event(kind: str, **body: Any) -> str:
        payload = {"type": kind, "sequence_number": next(sequence), **body}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def lines() -> Iterator[str]:
        opening = _response_object(job, req, "", None, "in_progress")
        yield event("response.created", response=opening)
        yield event("response.in_progress", response=opening)
        item = {"type": "message", "id": message_id, "status": "in_progress",
                "role": "assistant", "content": []}
        yield event("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        yield event("response.content_part.added", output_index=0, content_index=0,
                    item_id=message_id, part=part)
        text, finish = [], None
        for _, delta in job_deltas(job, deadline):
            if delta is None:
                yield ": keep-alive\n\n"
                continue
            if delta.text:
                text.append(delta.text)
                yield event("response.output_text.delta", output_index=0, content_index=0,
                            item_id=message_id, delta=delta.text, logprobs=[])
            finish = delta.finish_reason or finish
        full = "".join(text)
        yield event("response.output_text.done", output_index=0, content_index=0,
                    item_id=message_id, text=full, logprobs=[])
        yield event("response.content_part.done", output_index=0, content_index=0,
                    item_id=message_id, part={**part, "text": full})
        final = _response_object(job, req, full, finish, "completed", message_id)
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(kind, response=final)

    def error_line(exc: ServiceError) -> str:
        return event("error", code=exc.code, message=exc.message, param=exc.param)

    return run_stream(job, lines(), error_line)
