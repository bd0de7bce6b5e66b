"""The Anthropic Messages API's requests, as pydantic models: what Claude
Code and the `anthropic` SDKs send to `/v1/messages`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field

from ..schemas import MAX_MESSAGES, MAX_TOOLS, _Lenient
from ..spec import Answer, requires_when


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


def _blocks(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Content as a string or blocks of these types (with what each must hold)."""
    return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
        {"type": "object", "required": ["type", *(k for k in fields if k != "content")],
         "properties": {"type": {"const": kind}, **fields}}
        for kind, fields in kinds.items()]}}]}


# the blocks served in each role's turns (images get a precise 400); a missing text,
# name or input reads as empty
_RESULT_TEXT = {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
    "type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}}]}
USER_BLOCKS = _blocks({"text": {}, "redacted_thinking": {}, "tool_result": {
    "tool_use_id": {"type": "string", "minLength": 1}, "content": _RESULT_TEXT}})
ASSISTANT_BLOCKS = _blocks({"text": {}, "tool_use": {}, "thinking": {},
                            "redacted_thinking": {}})


class UserTurn(_Lenient):
    role: Literal["user"]
    content: Union[str, list[dict[str, Any]]] = Field(json_schema_extra=USER_BLOCKS)


class AssistantTurn(_Lenient):
    role: Literal["assistant"]
    content: Union[str, list[dict[str, Any]]] = Field(json_schema_extra=ASSISTANT_BLOCKS)


# a turn's blocks are read as dicts (an unserved block gets a precise 400)
MessageParam = Annotated[Union[UserTurn, AssistantTurn], Field(discriminator="role")]


class ToolParam(_Lenient):
    # "custom" or absent; Anthropic's own tools name a version (a precise 400)
    type: Optional[str] = Field(None, json_schema_extra={"enum": ["custom", None]})
    name: str = Field(min_length=1, max_length=128)
    description: Optional[str] = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(_Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Optional[int] = Field(None, ge=0)


# tool_choice any or tool needs tools
_CHOICE_NEEDS_TOOLS = requires_when("tool_choice", ["any", "tool"], "tools", key="type")


class MessagesRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra=_CHOICE_NEEDS_TOOLS)

    model: str = ""  # empty: the default model
    max_tokens: int = Field(ge=1)
    messages: list[MessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: Optional[Union[str, list[TextBlock]]] = None
    stop_sequences: Optional[list[str]] = Field(None, max_length=4)
    temperature: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    stream: bool = False
    tools: Optional[list[ToolParam]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None
    metadata: Optional[dict[str, Any]] = None


class CountTokensRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra=_CHOICE_NEEDS_TOOLS)

    model: str = ""
    messages: list[MessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: Optional[Union[str, list[TextBlock]]] = None
    tools: Optional[list[ToolParam]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None


# --- success answers ------------------------------------------------------------------------

class TextOut(Answer):
    type: Literal["text"]
    text: str


class ThinkingOut(Answer):
    type: Literal["thinking"]
    thinking: str
    signature: str


class ToolUseOut(Answer):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentOut = Annotated[Union[TextOut, ThinkingOut, ToolUseOut], Field(discriminator="type")]


class MessageUsage(Answer):
    input_tokens: int
    output_tokens: int


class MessageAnswer(Answer):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentOut]
    stop_reason: Optional[Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]]
    stop_sequence: Optional[str]
    usage: MessageUsage


class TokenCount(Answer):
    input_tokens: int


class AnthropicErrorDetail(Answer):
    type: str
    message: str


class AnthropicError(Answer):
    """Anthropic's error shape."""

    type: Literal["error"]
    error: AnthropicErrorDetail
