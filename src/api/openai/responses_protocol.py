"""OpenAI's Responses API: its request, its items, and their translation to
and from the chat the serving core runs.

Input items (messages, function calls and their outputs, reasoning) are
normalised to the shape the API lists them in, ids included, so that a
stored response keeps exactly what it was generated from; they become chat
messages for the model's template. The reply becomes output items:
reasoning, then the message, then function calls.
"""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from ...core.exceptions import InvalidRequestError, UnsupportedFeatureError
from ..reply import ReplySummary
from ..schemas import CHOICE_NEEDS_TOOLS, MAX_TOOLS, Text, _Lenient, null_is_default
from ..spec import Answer, requires_when

# include values: what this server fills in, and those of built-in tools, which
# have nothing to include here since such tools are refused
INCLUDE_LOGPROBS = "message.output_text.logprobs"
INCLUDE_VALUES = frozenset({
    INCLUDE_LOGPROBS, "reasoning.encrypted_content", "file_search_call.results",
    "web_search_call.results", "web_search_call.action.sources", "message.input_image.image_url",
    "computer_call_output.output.image_url", "code_interpreter_call.outputs"})
NAME = {"type": "string", "minLength": 1}
FUNCTION_TOOL = {"type": "object", "required": ["type", "name"], "properties": {
    "type": {"const": "function"}, "name": NAME,
    "parameters": {"anyOf": [{"type": "object"}, {"type": "null"}]}}}
TEXT_PART_TYPES = ("input_text", "output_text", "text")
_STRING = {"type": "string"}
_TEXT_CONTENT = {"anyOf": [_STRING, {"type": "array", "items": {
    "type": "object", "required": ["type", "text"],
    "properties": {"type": {"enum": list(TEXT_PART_TYPES)}, "text": _STRING}}}]}
# a conversation needs more than reasoning: a message, a call or a call's output
NOT_ONLY_REASONING = {"not": {"type": "object", "required": ["type"],
                              "properties": {"type": {"const": "reasoning"}}}}
# the input items served (normalise_item), as the document states them
INPUT_ITEM = {"anyOf": [
    {"type": "object", "required": ["role"], "properties": {
        "type": {"const": "message"}, "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": _TEXT_CONTENT}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
        "type": {"const": "function_call"}, "call_id": _STRING, "name": _STRING,
        "arguments": _STRING}},
    {"type": "object", "required": ["type", "call_id", "output"], "properties": {
        "type": {"const": "function_call_output"}, "call_id": _STRING, "output": _TEXT_CONTENT}},
    {"type": "object", "required": ["type"], "properties": {"type": {"const": "reasoning"}}}]}
MAX_METADATA_PAIRS = 16


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class TextFormat(_Lenient):
    model_config = ConfigDict(json_schema_extra=requires_when("type", ["json_schema"], "schema"))

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _schema_given(self) -> "TextFormat":
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("type 'json_schema' needs a 'schema'")
        return self

    def response_format(self) -> Optional[dict[str, Any]]:
        """The chat completions `response_format` of the same meaning."""
        if self.type == "json_schema":  # the Responses API flattens what chat nests
            return {"type": "json_schema", "json_schema": {
                "name": self.name or "response", "schema": self.schema_, "strict": self.strict}}
        return {"type": self.type} if self.type == "json_object" else None

    def echo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextOptions(_Lenient):
    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: Optional[Literal["low", "medium", "high"]] = None


class ReasoningOptions(_Lenient):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = None
    summary: Optional[Literal["auto", "concise", "detailed"]] = None
    generate_summary: Optional[Literal["auto", "concise", "detailed"]] = None


class ResponsesRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra={"allOf": CHOICE_NEEDS_TOOLS})

    model: str = ""  # empty: the default model
    input: Union[Text, Annotated[list[dict[str, Any]],
                                 Field(min_length=1, json_schema_extra={
                                     "items": INPUT_ITEM, "contains": NOT_ONLY_REASONING})]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    stream: bool = False
    text: TextOptions = Field(default_factory=TextOptions, json_schema_extra=null_is_default)
    reasoning: ReasoningOptions = Field(default_factory=ReasoningOptions,
                                        json_schema_extra=null_is_default)
    previous_response_id: Optional[str] = Field(None, min_length=1, max_length=256)
    # function tools only (built-in ones get a precise 400); read as dicts for that reason
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_TOOLS,
                                        json_schema_extra={"items": FUNCTION_TOOL})
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any]] = Field(
        "auto", json_schema_extra={"anyOf": [
            {"enum": ["none", "auto", "required"]},
            {"type": "object", "required": ["type", "name"],
             "properties": {"type": {"const": "function"}, "name": NAME}},
            {"type": "object", "required": ["type", "tools"],
             "properties": {"type": {"const": "allowed_tools"},
                            "mode": {"enum": ["none", "auto", "required"]},
                            "tools": {"type": "array", "minItems": 1, "items": {
                                "type": "object", "required": ["name"],
                                "properties": {"name": NAME}}}}}]})
    parallel_tool_calls: bool = True
    max_tool_calls: Optional[int] = Field(None, ge=1)
    store: bool = True
    include: list[str] = Field(default_factory=list,
                               json_schema_extra={"items": {"enum": sorted(INCLUDE_VALUES)}})
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: Optional[dict[str, str]] = None
    user: Optional[str] = None
    # OpenAI's platform features, refused with a precise 400: null (or false) here
    background: bool = Field(False, json_schema_extra={"enum": [False, None]})
    conversation: Optional[Any] = Field(None, json_schema_extra={"type": "null"})
    prompt: Optional[Any] = Field(None, json_schema_extra={"type": "null"})
    # vLLM's extensions, as on chat completions
    seed: Optional[int] = None
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)
    chat_template_kwargs: Optional[dict[str, Any]] = None

    @field_validator("text", "reasoning", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        if value is None:
            return value
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs are allowed")
        for key, text in value.items():
            if len(key) > 64 or len(text) > 512:
                raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return value

    @model_validator(mode="after")
    def _supported(self) -> "ResponsesRequest":
        if self.background:
            raise UnsupportedFeatureError("Background responses are not supported by this "
                                          "server; send the request without background.",
                                          param="background")
        for name in ("conversation", "prompt"):
            if getattr(self, name) is not None:
                raise UnsupportedFeatureError(
                    f"'{name}' (OpenAI's stored {name}s) is not supported by this server; send "
                    f"the input itself, or chain responses with previous_response_id.",
                    param=name)
        for i, value in enumerate(self.include):
            if value not in INCLUDE_VALUES:
                raise InvalidRequestError(f"include.{i} '{value}' is not one of: "
                                          f"{', '.join(sorted(INCLUDE_VALUES))}.",
                                          param=f"include.{i}")
        return self

    # tools ----------------------------------------------------------------------------
    def chat_tools(self) -> tuple[list[dict[str, Any]], Any]:
        """The function tools and tool_choice in chat completions' shape."""
        tools = []
        for i, tool in enumerate(self.tools):
            kind = tool.get("type")
            if kind != "function":
                raise UnsupportedFeatureError(
                    f"Tools of type '{kind}' are built into OpenAI's platform and not available "
                    f"on this server; only tools of type 'function' are served.",
                    param=f"tools.{i}.type")
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequestError("A function tool needs a 'name'.",
                                          param=f"tools.{i}.name")
            function = {"name": name, "parameters": tool.get("parameters") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            tools.append({"type": "function", "function": function})
        choice = self.tool_choice
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "function":
                choice = {"type": "function", "function": {"name": choice.get("name")}}
            elif kind == "allowed_tools":  # a subset of the tools, in a mode
                listed = choice.get("tools")
                if not isinstance(listed, list) or not all(
                        isinstance(t, dict) and isinstance(t.get("name"), str) for t in listed):
                    raise InvalidRequestError("allowed_tools needs 'tools': a list of "
                                              "{\"type\": \"function\", \"name\": ...}.",
                                              param="tool_choice.tools")
                allowed = {t.get("name") for t in listed}
                tools = [t for t in tools if t["function"]["name"] in allowed]
                choice = choice.get("mode", "auto")
                if not tools:
                    raise InvalidRequestError("allowed_tools names none of the tools.",
                                              param="tool_choice")
            else:
                raise UnsupportedFeatureError(f"tool_choice of type '{kind}' names a built-in "
                                              f"tool, which this server does not have.",
                                              param="tool_choice")
        return tools, choice

    def tools_echo(self) -> list[dict[str, Any]]:
        return [{"strict": None, "description": None, **tool} for tool in self.tools]

    # input items --------------------------------------------------------------------------
    def input_items(self) -> list[dict[str, Any]]:
        """This request's input as normalised items, each with an id."""
        if isinstance(self.input, str):
            return [_message_item("user", self.input)]
        return [normalise_item(item, i) for i, item in enumerate(self.input)]


def _message_item(role: str, text: str, item_id: Optional[str] = None) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    part: dict[str, Any] = {"type": kind, "text": text}
    if kind == "output_text":
        part["annotations"] = []
    return {"id": item_id or new_id("msg"), "type": "message", "role": role,
            "content": [part], "status": "completed"}


def _text_of(parts: Any, param: str) -> str:
    """The text of message content or a tool's output: a string or text parts."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise InvalidRequestError("Content must be a string or a list of content parts.",
                                  param=param)
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PART_TYPES:
            raise UnsupportedFeatureError(
                f"Content parts of type '{kind}' are not supported by this server; send text "
                f"(input_text).", param=f"{param}.{j}")
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError("A text part needs 'text', a string.",
                                      param=f"{param}.{j}.text")
        texts.append(part["text"])
    return "".join(texts)


def _string(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(f"Missing required parameter: '{param}.{key}' (a string).",
                                  param=f"{param}.{key}")
    return value


def normalise_item(item: Any, index: int) -> dict[str, Any]:
    param = f"input.{index}"
    if not isinstance(item, dict):
        raise InvalidRequestError("Each input item must be an object.", param=param)
    kind = item.get("type", "message")  # a message may leave its type out
    item_id = item.get("id") if isinstance(item.get("id"), str) else None
    if kind == "message":
        role = item.get("role")
        if role is None:
            raise InvalidRequestError(f"Missing required parameter: '{param}.role'.",
                                      param=f"{param}.role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError("A message's role must be user, assistant, system or "
                                      "developer.", param=f"{param}.role")
        return _message_item(role, _text_of(item.get("content", ""), f"{param}.content"),
                             item_id)
    if kind == "function_call":
        return {"id": item_id or new_id("fc"), "type": "function_call",
                "call_id": _string(item, "call_id", param), "name": _string(item, "name", param),
                "arguments": _string(item, "arguments", param), "status": "completed"}
    if kind == "function_call_output":
        return {"id": item_id or new_id("fco"), "type": "function_call_output",
                "call_id": _string(item, "call_id", param),
                "output": _text_of(item.get("output"), f"{param}.output"), "status": "completed"}
    if kind == "reasoning":
        texts = [p.get("text", "") for p in (item.get("content") or item.get("summary") or [])
                 if isinstance(p, dict)]
        return reasoning_item("".join(texts), item_id)
    if kind == "item_reference":
        raise UnsupportedFeatureError("item_reference is not supported by this server; send "
                                      "the item itself, or chain with previous_response_id.",
                                      param=f"{param}.type")
    raise UnsupportedFeatureError(f"Input items of type '{kind}' are not supported by this "
                                  f"server: it serves messages, function_call, "
                                  f"function_call_output and reasoning items.",
                                  param=f"{param}.type")


def reasoning_item(text: str, item_id: Optional[str] = None) -> dict[str, Any]:
    return {"id": item_id or new_id("rs"), "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "encrypted_content": None,
            "status": "completed"}


def chat_messages(items: list[dict[str, Any]],
                  instructions: Optional[str]) -> list[dict[str, Any]]:
    """Normalised items as chat messages: function calls join the assistant
    turn they follow, a reasoning item goes with the assistant turn after it."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] \
        if instructions else []
    reasoning: Optional[str] = None
    previous = ""
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning = item["content"][0]["text"] if item["content"] else ""
        elif kind == "message":
            message = {"role": item["role"], "content": item["content"][0]["text"]}
            if item["role"] == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and previous in ("message", "function_call") \
                    and reasoning is None:
                last.setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": "", "tool_calls": [call]}
                if reasoning is not None:
                    message["reasoning_content"], reasoning = reasoning, None
                messages.append(message)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": item["output"]})
        previous = kind
    return messages


def output_items(reply: ReplySummary, complete: bool,
                 logprobs: Optional[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A whole reply as output items: reasoning, the message, the calls."""
    items = []
    if reply.reasoning:
        items.append(reasoning_item(reply.reasoning))
    if reply.content.strip() or not reply.calls:
        items.append(message_output(new_id("msg"), reply.content, logprobs))
    items += [function_call_item(new_id("fc"), c["id"], c["name"], c["arguments"])
              for c in reply.calls]
    if not complete and items:
        items[-1]["status"] = "incomplete"
    return items


def message_output(item_id: str, text: str, logprobs: Optional[list[dict[str, Any]]],
                   status: str = "completed") -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    part["logprobs"] = logprobs or []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [part]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


# --- success answers ------------------------------------------------------------------------

class OutputText(Answer):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[dict[str, Any]]


class MessageItem(Answer):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class FunctionCallItem(Answer):
    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ReasoningText(Answer):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(Answer):
    id: str
    type: Literal["reasoning"]
    summary: list[Any]
    content: list[ReasoningText]
    encrypted_content: Optional[str]
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[Union[MessageItem, FunctionCallItem, ReasoningItem],
                       Field(discriminator="type")]


class ResponseUsage(Answer):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class ResponseObject(Answer):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem]
    error: Optional[dict[str, Any]]
    incomplete_details: Optional[dict[str, Any]]
    instructions: Optional[str]
    metadata: dict[str, str]
    parallel_tool_calls: bool
    previous_response_id: Optional[str]
    store: bool
    tools: list[dict[str, Any]]
    usage: Optional[ResponseUsage]


class DeletedResponse(Answer):
    id: str
    object: Literal["response"]
    deleted: bool


class InputItemList(Answer):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: Optional[str]
    last_id: Optional[str]
    has_more: bool
