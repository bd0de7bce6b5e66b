"""Ollama's API requests, as pydantic models: what Open WebUI, n8n's and
Dify's Ollama nodes, Continue and the `ollama` SDKs send to `/api/*`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from ..schemas import MAX_MESSAGES, MAX_TOOLS, Text, _Lenient
from ..spec import Answer

# seconds, or a duration: "5m", "1h", "30s", "500ms"; 0 unloads, negative keeps
Duration = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?(ms|s|m|h)?$")]
KeepAlive = Optional[Union[float, Duration]]


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = ""
    thinking: Optional[str] = None
    # refused with a precise 400: this server's models read text only
    images: Optional[list[Any]] = Field(None, json_schema_extra={"maxItems": 0})
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_name: Optional[str] = None


class _Generation(_Lenient):
    model: str = Field(min_length=1)
    format: Optional[Union[Literal["", "json"], dict[str, Any]]] = None  # or a JSON schema
    options: Optional[dict[str, Any]] = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: KeepAlive = None
    # or a level, as gpt-oss takes it
    think: Optional[Union[bool, Literal["none", "minimal", "low", "medium", "high", "xhigh"]]] = None


class ChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)
    tools: Optional[list[dict[str, Any]]] = Field(None, max_length=MAX_TOOLS)


class GenerateRequest(_Generation):
    prompt: str = ""
    system: Optional[str] = None
    suffix: Optional[str] = Field(None, json_schema_extra={"maxLength": 0})  # no fill-in
    raw: bool = False
    # refused with a precise 400: this server's models read text only
    images: Optional[list[Any]] = Field(None, json_schema_extra={"maxItems": 0})


class EmbedRequest(_Lenient):
    model: str = Field(min_length=1)
    input: Union[Text, Annotated[list[Text], Field(min_length=1)]]
    dimensions: Optional[int] = Field(None, ge=1)
    keep_alive: KeepAlive = None


class LegacyEmbeddingsRequest(_Lenient):
    model: str = Field(min_length=1)
    prompt: Text
    keep_alive: KeepAlive = None


class ModelRequest(_Lenient):
    model: str = ""
    name: Optional[str] = None  # older clients send `name`

    @property
    def id(self) -> str:
        return self.model or self.name or ""


class PullRequest(ModelRequest):
    stream: bool = True
    insecure: bool = False


# --- success answers ------------------------------------------------------------------------

class Version(Answer):
    version: str


class ModelDetails(Answer):
    parent_model: str
    format: str
    family: str
    families: Optional[list[str]]
    parameter_size: str
    quantization_level: str


class Tag(Answer):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class Tags(Answer):
    models: list[Tag]


class RunningModel(Tag):
    expires_at: str
    size_vram: int


class Running(Answer):
    models: list[RunningModel]


class ShowAnswer(Answer):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class CallFunction(Answer):
    name: str
    arguments: dict[str, Any]


class CallOut(Answer):
    function: CallFunction


class MessageOut(Answer):
    role: Literal["assistant"]
    content: str
    thinking: Optional[str] = None
    tool_calls: Optional[list[CallOut]] = None


class _Final(Answer):
    """The last object's counts (absent when a request only loads or unloads)."""

    model: str
    created_at: str
    done: bool
    done_reason: Optional[str] = None
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None


class ChatAnswer(_Final):
    message: MessageOut


class GenerateAnswer(_Final):
    response: str
    thinking: Optional[str] = None


class EmbedAnswer(Answer):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbedding(Answer):
    embedding: list[float]


class PullStatus(Answer):
    status: str


class OllamaError(Answer):
    """Ollama's error shape."""

    error: str
