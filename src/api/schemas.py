"""pydantic models of the requests the serving core takes: OpenAI's chat
completions and completions bodies (every face translates into the chat one),
and the management and cluster bodies.

Unknown fields are ignored, as the OpenAI API and vLLM do: real clients
send fields a local server has no use for.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, Strict, StrictInt,
                      field_validator, model_validator)

from ..core.exceptions import InvalidRequestError, UnsupportedFeatureError
from ..core.model_catalog import ModelSettings
from ..engines.chat_template import RESERVED_TEMPLATE_VARIABLES
from ..utils.names import ModelState, Strategy
from .spec import Answer, requires_when


MAX_CHOICES = 16  # `n`: each choice is a sequence of its own in the engine
MAX_SEQUENCES = 128  # prompts x n in one completions request
MAX_EMBEDDING_INPUTS = 2048  # as OpenAI
MAX_MESSAGES = 2048  # as OpenAI
MAX_TOOLS = 128  # as OpenAI
MAX_LOGIT_BIAS = 300  # tokens one request may bias


Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


def inputs_of(most: int) -> Any:
    """A prompt or an input: a text, texts, token ids, or lists of them (at most
    `most` of those); none of them empty."""
    return Union[Text, Annotated[list[Text], Field(min_length=1, max_length=most)], TokenIds,
                 Annotated[list[TokenIds], Field(min_length=1, max_length=most)]]


def null_is_default(schema: dict[str, Any]) -> None:
    """json_schema_extra of a field that takes null for its default value."""
    kept = {k: schema.pop(k) for k in list(schema) if k not in ("title", "default", "description")}
    schema["anyOf"] = [kept, {"type": "null"}]


def _takes_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    return any(_takes_int(arg) for arg in get_args(annotation) if arg is not bool)


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class _Lenient(BaseModel):
    """Unknown fields are ignored (clients send what a local server has no use
    for); known ones are strict: a boolean is not a number, 1.5 not a count,
    "3" not a 3. A whole float is a whole number, as JSON Schema counts it."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _whole_floats_are_integers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = cls._integer_keys()
        return {k: _integral(v) if k in keys else v for k, v in data.items()}

    @classmethod
    def _integer_keys(cls) -> frozenset[str]:
        keys = cls.__dict__.get("_integer_key_cache")
        if keys is None:
            names: set[str] = set()
            for name, info in cls.model_fields.items():
                if _takes_int(info.annotation):
                    names.add(name)
                    alias = info.validation_alias
                    names.update(alias.choices if isinstance(alias, AliasChoices) else ())
            keys = frozenset(str(n) for n in names)
            setattr(cls, "_integer_key_cache", keys)
        return keys


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class OtherPart(_Lenient):
    type: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[Union[TextPart, OtherPart]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None
    # an earlier turn's reasoning, as this server returns it (vLLM's and llama-server's
    # name; `reasoning` as some clients send it): the chat template decides what it keeps
    reasoning_content: Optional[str] = Field(
        None, validation_alias=AliasChoices("reasoning_content", "reasoning"))

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if not isinstance(part, TextPart):
                raise InvalidRequestError(f"Content parts of type '{part.type}' are not supported "
                                          "by this model; send text.", param="messages")
            parts.append(part.text)
        return "".join(parts)

    def for_template(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        for key in ("name", "tool_calls", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class StreamOptions(_Lenient):
    include_usage: bool = False


NO_PROMPT_LOGPROBS_IN_STREAMS = {
    "if": {"required": ["stream"], "properties": {"stream": {"const": True}}},
    "then": {"properties": {"prompt_logprobs": {"type": "null"}}}}


class _SamplingFields(_Lenient):
    model: str = ""  # empty: the default model (Dify's credential check sends none)
    max_tokens: Optional[int] = Field(
        None, ge=1, validation_alias=AliasChoices("max_tokens", "max_completion_tokens"))
    temperature: float = Field(1.0, ge=0.0, le=2.0, json_schema_extra=null_is_default)
    top_p: float = Field(1.0, gt=0.0, le=1.0, json_schema_extra=null_is_default)
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    # JSON keys are strings: token ids are read from them
    logit_bias: Optional[dict[Annotated[int, Strict(False)], float]] = Field(
        None, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    seed: Optional[int] = None
    stop: Optional[Union[str, Annotated[list[str], Field(max_length=4)]]] = None  # as OpenAI
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    # vLLM's extension: each prompt token's logprob and this many alternatives
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=20)
    return_tokens_as_token_ids: bool = False  # vLLM's: logprobs name tokens `token_id:<id>`
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: Optional[dict[int, float]]) -> Optional[dict[int, float]]:
        if value and len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        for bias in (value or {}).values():
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values must be between -100 and 100")
        return value

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def prompt_logprobs_wanted(self) -> Optional[int]:
        """Alternatives per prompt token the engine is to score, or None."""
        return self.prompt_logprobs

    @model_validator(mode="after")
    def _prompt_logprobs_whole(self) -> "_SamplingFields":
        if self.prompt_logprobs is not None and self.stream:
            raise InvalidRequestError("prompt_logprobs is not available when streaming.",
                                      param="prompt_logprobs")
        return self


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    description: Optional[str] = None
    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"},
                                        alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Lenient):
    model_config = ConfigDict(json_schema_extra=requires_when("type", ["json_schema"],
                                                              "json_schema"))

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self

    def schema(self) -> Optional[dict[str, Any]]:  # type: ignore[override]
        """The JSON schema the reply must follow, or None for free text."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.json_schema
        return None


class FunctionDef(_Lenient):
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema
    strict: Optional[bool] = None


class ToolDef(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str = Field(min_length=1)


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


# a required or named tool_choice needs tools (and a named one, among them)
CHOICE_NEEDS_TOOLS = [
    requires_when("tool_choice", ["required"], "tools"),
    {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"type": "object"}}},
     "then": {"required": ["tools"], "properties": {"tools": {"minItems": 1}}}}]


class ChatCompletionRequest(_SamplingFields):
    model_config = ConfigDict(json_schema_extra={"allOf": [
        NO_PROMPT_LOGPROBS_IN_STREAMS, *CHOICE_NEEDS_TOOLS,
        {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"minimum": 1}}},
         "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}}]})

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: Optional[list[ToolDef]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    max_tool_calls: Optional[int] = Field(None, ge=1)  # the Responses API's; an extension here
    logprobs: bool = Field(False, json_schema_extra=null_is_default)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    # further variables for the chat template (Qwen3's enable_thinking), as vLLM takes them
    chat_template_kwargs: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _kwargs_not_reserved(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        taken = sorted(RESERVED_TEMPLATE_VARIABLES & set(value or {}))
        if taken:
            raise ValueError(f"{', '.join(taken)} cannot be set through chat_template_kwargs")
        return value

    def tool_list(self) -> Optional[list[dict[str, Any]]]:
        """The tools as the chat template and the tool-call parser read them."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def tool_choice_value(self) -> Optional[str]:
        """none / auto / required, or the name of the one function to call."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice

    def template_kwargs(self) -> dict[str, Any]:
        """The chat template's variables beyond the messages and tools.
        `reasoning_effort` reaches it as it is (gpt-oss reads it); "none"
        also switches thinking off where a template asks `enable_thinking`."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
            if self.reasoning_effort == "none":
                kwargs.setdefault("enable_thinking", False)
        return kwargs

    @field_validator("logprobs", mode="before")
    @classmethod
    def _null_is_false(cls, value: Any) -> Any:
        return False if value is None else value

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true.", param="top_logprobs")
        return self

    @property
    def logprobs_wanted(self) -> Optional[int]:
        """Alternatives per token wanted by the engine, or None for no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def json_schema(self) -> Optional[dict[str, Any]]:
        return self.response_format.schema() if self.response_format else None


class CompletionRequest(_SamplingFields):
    model_config = ConfigDict(json_schema_extra=NO_PROMPT_LOGPROBS_IN_STREAMS)

    prompt: inputs_of(MAX_SEQUENCES)  # type: ignore[valid-type]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    suffix: Optional[str] = Field(None, json_schema_extra={"maxLength": 0})  # no fill-in

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.suffix:
            raise UnsupportedFeatureError("suffix (fill-in-the-middle) is not supported by "
                                          "this server.", param="suffix")
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError("max_tokens 0 only scores the prompt: set echo (and "
                                      "logprobs) to get something back.", param="max_tokens")
        return self

    @property
    def logprobs_wanted(self) -> Optional[int]:
        return self.logprobs

    @property
    def prompt_logprobs_wanted(self) -> Optional[int]:
        """echo with logprobs gives the prompt's tokens theirs, as the legacy API did."""
        if self.prompt_logprobs is not None:
            return max(self.prompt_logprobs, self.logprobs or 0)
        return self.logprobs if self.echo else None

    @property
    def json_schema(self) -> None:  # structured output is a chat feature
        return None
    max_tokens: Optional[int] = Field(  # 0 with echo: the prompt is scored, nothing generated
        16, ge=0, validation_alias=AliasChoices("max_tokens", "max_completion_tokens"))

    @model_validator(mode="after")
    def _sequences_in_bounds(self) -> "CompletionRequest":
        if len(self.prompts()) * self.n > MAX_SEQUENCES:
            raise InvalidRequestError(f"At most {MAX_SEQUENCES} sequences (prompts times n) "
                                      f"per request.", param="prompt")
        return self

    def prompts(self) -> list[Union[str, list[int]]]:
        """One entry per choice: a text, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class LoadModelRequest(ModelSettings):
    """POST /v1/models/load: a model by name (known, or new with its path),
    the engine to use and per-model settings. Unknown fields are refused:
    a misspelt setting must not be silently dropped."""

    model_name: str = Field(min_length=1, max_length=256)
    model_path: Optional[str] = Field(None, max_length=4096)
    engine_type: Optional[str] = None

    def settings(self) -> ModelSettings:
        return ModelSettings(**self.model_dump(include=self.model_fields_set
                                               & set(ModelSettings.model_fields)))


class PullModelRequest(BaseModel):
    """POST /v1/models/pull: a Hugging Face or ModelScope repository (with the
    .gguf file or quantization to take; none: its only or its Q4_K_M .gguf,
    or the whole model folder when it has no .gguf), or the URL of a .gguf."""

    # the document says the rule _one_origin checks: a repository, or a URL
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["url"], "properties": {
            "url": {"type": "string"}, "repo": {"type": "null"}, "file": {"type": "null"},
            "quantization": {"type": "null"}, "source": {"enum": ["url", None]}}},
        {"required": ["repo"], "properties": {
            "repo": {"type": "string"}, "url": {"type": "null"},
            "source": {"enum": ["huggingface", "modelscope", None]}}}]})

    source: Optional[Literal["huggingface", "modelscope", "url"]] = Field(
        None, description="default: url when url is given, else huggingface")
    repo: Optional[str] = Field(None, min_length=3, max_length=256, examples=["owner/name"])
    revision: Optional[str] = Field(None, min_length=1, max_length=128)
    file: Optional[str] = Field(None, min_length=1, max_length=1024)
    quantization: Optional[str] = Field(None, min_length=1, max_length=64, examples=["Q4_K_M"])
    url: Optional[str] = Field(None, min_length=8, max_length=4096)
    sha256: Optional[str] = Field(None, pattern="^[0-9a-fA-F]{64}$",
                                  description="checked against a URL pull's file")
    name: Optional[str] = Field(None, min_length=1, max_length=128,
                                description="the model id; default: the file's or repo's name")
    stream: bool = False

    @model_validator(mode="after")
    def _one_origin(self) -> "PullModelRequest":
        source = self.source or ("url" if self.url else "huggingface")
        if source == "url" and not self.url:
            raise ValueError("a url pull needs url")
        if source != "url" and not self.repo:
            raise ValueError("give repo (owner/name) or url")
        if source == "url" and (self.repo or self.file or self.quantization):
            raise ValueError("url takes neither repo, file nor quantization")
        if source != "url" and self.url:
            raise ValueError("give either repo or url")
        self.source = source
        return self


# load-balanced mode: /v1/cluster/* ----------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterScaleRequest(_Strict):
    action: Literal["scale_up", "scale_down"]
    count: int = Field(1, ge=1, le=64)


class ClusterStrategyRequest(_Strict):
    strategy: Strategy


class ClusterRestartRequest(_Strict):
    instance_id: str = Field(min_length=1, max_length=64)


class ClusterUpstreamRequest(_Strict):
    url: str = Field(min_length=1, max_length=2048)
    weight: int = Field(1, ge=1, le=1000)
    api_key: Optional[str] = Field(None, max_length=4096)


# --- success answers of the management, system and cluster routes -------------------------

class Health(Answer):
    status: Literal["healthy", "unavailable"]
    models_ready: list[str]
    models_loading: list[str] = []
    model_errors: dict[str, Optional[str]] = {}
    default_model: Optional[str] = None
    parallel_sequences: int = 0  # what the ready models decode at once, together


class ClusterHealth(Answer):
    status: Literal["healthy", "unavailable"]
    mode: Literal["load_balance"]
    healthy_instances: int
    total_instances: int
    models_ready: list[str]


class PullInfo(Answer):
    """A model pull and its progress."""

    id: str
    object: Literal["model.pull"]
    status: Literal["downloading", "success", "error", "cancelled"]
    source: str
    origin: str
    total: Optional[int] = None  # bytes; None: not known before the end
    completed: int
    percent: Optional[float] = None
    error: Optional[str] = None


class ModelInfo(Answer):
    """A model as the model manager describes it (the console's model page)."""

    id: str
    state: ModelState
    error: Optional[str] = None
    engine: Optional[str] = None
    path: Optional[str] = None
    size_bytes: Optional[int] = None
    requests_in_flight: int = 0
    load_seconds: Optional[float] = None
    loaded_at: Optional[float] = None
    last_used: Optional[float] = None
    expires_at: Optional[float] = None  # when an idle model is unloaded; None: never
    default: bool = False
    load_progress: Optional[float] = None  # while loading
    load_stage: Optional[str] = None
    runtime: Optional[dict[str, Any]] = None  # the engine's figures, once ready
    metadata: Optional[dict[str, Any]] = None  # read from the files (src/core/model_metadata.py)
    download: Optional[PullInfo] = None  # while it is being pulled


class PullList(Answer):
    object: Literal["list"]
    data: list[PullInfo]


class DeletedModel(Answer):
    id: str
    object: Literal["model"]
    deleted: bool


class SystemStatus(Answer):
    status: Literal["ok"]
    version: str
    uptime_seconds: float
    security: dict[str, Any]


class ProbeResult(Answer):
    ok: bool
    latency_ms: float
    error: Optional[str] = None


class DeepHealth(Answer):
    status: Literal["healthy", "unhealthy"]
    models: dict[str, ProbeResult]


class SystemMetrics(Answer):
    timestamp: float
    system: dict[str, Any]
    inference: dict[str, Any]


class LogLines(Answer):
    object: Literal["list"]
    file: str
    data: list[dict[str, Any]]


class ClusterChange(Answer):
    """An answer of the cluster API: what changed (fields per route)."""


class Deleted(Answer):
    id: str
    deleted: bool


class OpenAPIDocument(Answer):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
