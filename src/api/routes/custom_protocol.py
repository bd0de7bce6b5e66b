"""The original framework's custom protocol: `POST /generate` with a prompt,
system instructions and the earlier turns as two lists (inputs and outputs,
paired), plus any chat sampling field. The answer is a chat completion with
the reply's text also at the top level (`text`, `reasoning_content`,
`finish_reason`); streams send chat completion chunks."""
from __future__ import annotations

from typing import Any, Literal, Optional

from flask import Blueprint, jsonify
from pydantic import Field

from ...core.exceptions import InvalidRequestError
from ..openai.render import chat_response, chat_stream
from ..openai.protocol import ChatCompletion, ChatCompletionChunk
from ..request_parsing import read_json, validate_as
from ..schemas import ChatCompletionRequest, _Lenient
from ..serving import event_stream, start_chat_job
from ..spec import accepts, responds, sse

bp = Blueprint("custom_protocol", __name__)


class CustomGenerateRequest(_Lenient):
    model: str = ""  # empty: the default model
    prompt: str = Field(min_length=1)
    system_info: Optional[str] = None
    history_input: list[str] = Field(default_factory=list)
    history_output: list[str] = Field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        if len(self.history_input) != len(self.history_output):
            raise InvalidRequestError("history_input and history_output must have the same "
                                      "length: they are the earlier turns, paired.",
                                      param="history_output")
        messages = [{"role": "system", "content": self.system_info}] if self.system_info else []
        for said, answered in zip(self.history_input, self.history_output):
            messages += [{"role": "user", "content": said},
                         {"role": "assistant", "content": answered}]
        return messages + [{"role": "user", "content": self.prompt}]


class Generation(ChatCompletion):
    """A chat completion, with the first choice's reply also at the top level."""

    object: Literal["generation"]  # type: ignore[assignment]
    text: Optional[str]
    reasoning_content: Optional[str] = None
    finish_reason: Optional[str]


@bp.post("/generate")
@responds(Generation, sse(ChatCompletionChunk))
@accepts(CustomGenerateRequest)
def generate(req: CustomGenerateRequest):
    body = read_json()
    # every sampling field of a chat request (temperature, max_tokens, stop, seed...) applies
    sampling = {k: v for k, v in body.items()
                if k not in CustomGenerateRequest.model_fields or k == "model"}
    chat = validate_as(ChatCompletionRequest, {**sampling, "messages": req.messages()})
    job, deadline = start_chat_job(chat, "generate")
    if chat.stream:
        return event_stream(chat_stream(job, chat, deadline), job)
    reply = chat_response(job, chat, deadline)
    first = reply["choices"][0]
    return jsonify({**reply, "object": "generation", "text": first["message"]["content"],
                    "reasoning_content": first["message"].get("reasoning_content"),
                    "finish_reason": first["finish_reason"]})
