"""Between the Anthropic Messages API and the serving core: a request
becomes a chat; a reply's events become content blocks (thinking, text,
tool_use) and Anthropic's stream events; errors get Anthropic's shape."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Union

from ...core.exceptions import InvalidRequestError, UnsupportedFeatureError
from ..reply import ReplySummary, call_arguments
from .protocol import CountTokensRequest, MessagesRequest, TextBlock

# HTTP status -> Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 409: "invalid_request_error",
               413: "request_too_large", 429: "rate_limit_error", 499: "invalid_request_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}


def render_error(status: int, openai_body: dict[str, Any]) -> dict[str, Any]:
    """An error of the shared hierarchy in Anthropic's wire shape."""
    return error_body(status, openai_body["error"]["message"])


def model_info(info: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's model object; created_at is when the model's file was made."""
    path = info.get("path")
    made = info.get("loaded_at") or time.time()
    if path and Path(path).exists():
        made = Path(path).stat().st_mtime
    return {"type": "model", "id": info["id"], "display_name": info["id"],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(made))}


def _system_text(system: Optional[Union[str, list[TextBlock]]]) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n\n".join(block.text for block in system)


def _block_text(content: Any, param: str) -> str:
    """A tool_result's content: a string or text blocks."""
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of blocks.", param=param)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise UnsupportedFeatureError("Only text blocks are supported in a tool_result here.",
                                          param=f"{param}.{j}")
        texts.append(str(block.get("text", "")))
    return "".join(texts)


def chat_messages(req: Union[MessagesRequest, CountTokensRequest]) -> list[dict[str, Any]]:
    """The conversation as chat messages: tool_result blocks become tool
    messages, tool_use blocks the assistant's tool calls, thinking blocks its
    reasoning_content."""
    messages: list[dict[str, Any]] = []
    system = _system_text(req.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(req.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        texts, calls, reasoning, results = [], [], [], []
        for j, block in enumerate(message.content):
            param = f"messages.{i}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use" and message.role == "assistant":
                calls.append({"id": str(block.get("id", "")), "type": "function", "function": {
                    "name": str(block.get("name", "")),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and message.role == "user":
                if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
                    raise InvalidRequestError("A tool_result needs tool_use_id.",
                                              param=f"{param}.tool_use_id")
                results.append({"role": "tool", "tool_call_id": str(block["tool_use_id"]),
                                "content": _block_text(block.get("content"), f"{param}.content")})
            elif kind == "thinking" and message.role == "assistant":
                reasoning.append(str(block.get("thinking", "")))
            elif kind == "redacted_thinking":
                continue  # nothing a local model can read
            else:
                raise UnsupportedFeatureError(
                    f"Content blocks of type '{kind}' are not supported in {message.role} "
                    f"messages by this server: it serves text, tool_use and thinking blocks "
                    f"from the assistant, text and tool_result blocks from the user.",
                    param=f"{param}.type")
        messages += results
        if texts or calls or reasoning or not results:
            out: dict[str, Any] = {"role": message.role, "content": "".join(texts)}
            if calls:
                out["tool_calls"] = calls
            if reasoning:
                out["reasoning_content"] = "".join(reasoning)
            messages.append(out)
    return messages


def chat_tools(req: Union[MessagesRequest, CountTokensRequest]) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` of the same meaning on a chat."""
    if not req.tools:
        if req.tool_choice is not None and req.tool_choice.type not in ("auto", "none"):
            raise InvalidRequestError("tool_choice needs tools.", param="tool_choice")
        return {}
    tools = []
    for i, tool in enumerate(req.tools):
        if tool.type not in (None, "custom"):
            raise UnsupportedFeatureError(
                f"Tools of type '{tool.type}' are Anthropic's own (server or client tools) and "
                f"not available on this server; define the tool with an input_schema.",
                param=f"tools.{i}.type")
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    body: dict[str, Any] = {"tools": tools}
    choice = req.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequestError("tool_choice of type 'tool' needs a name.",
                                          param="tool_choice.name")
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return body


def thinking_kwargs(req: Union[MessagesRequest, CountTokensRequest]) -> dict[str, Any]:
    """`thinking` for the chat template: disabled switches a template's thinking off."""
    if req.thinking is None:
        return {}
    return {"chat_template_kwargs": {"enable_thinking": req.thinking.type != "disabled"}}


def chat_body(req: MessagesRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req),
                            "max_tokens": req.max_tokens, "stream": req.stream,
                            **chat_tools(req), **thinking_kwargs(req)}
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    for key in ("temperature", "top_p", "top_k"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if req.metadata and isinstance(req.metadata.get("user_id"), str):
        body["user"] = req.metadata["user_id"]
    return body


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's tool_use ids begin with toolu_; the call's own id follows."""
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(finish: Optional[str], calls: bool) -> str:
    if finish == "length":
        return "max_tokens"
    return "tool_use" if calls else "end_turn"


def content_blocks(reply: ReplySummary) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.reasoning:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": ""})
    text = reply.content.strip() if reply.calls else reply.content
    if text or not reply.calls:
        blocks.append({"type": "text", "text": text})
    for call in reply.calls:
        blocks.append({"type": "tool_use", "id": tool_use_id(call["id"]), "name": call["name"],
                       "input": call_arguments(call)})
    return blocks


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}
