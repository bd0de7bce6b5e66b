"""The OpenAI face's models: the requests beyond the chat and completion
bodies (those are the serving core's, in ..schemas): embeddings, and vLLM's
/tokenize and /detokenize; and the success answers of every route."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, StrictInt, model_validator

from ...core.exceptions import InvalidRequestError
from ...utils.names import ModelState
from ..schemas import MAX_EMBEDDING_INPUTS, ChatMessage, _Lenient, inputs_of
from ..spec import Answer


class EmbeddingRequest(_Lenient):
    model: str = ""  # empty: the default model
    input: inputs_of(MAX_EMBEDDING_INPUTS)  # type: ignore[valid-type]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    def inputs(self) -> list[Union[str, list[int]]]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, int) for x in self.input):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)


class TokenizeRequest(_Lenient):
    """vLLM's /tokenize: `prompt`, or `messages` rendered with the chat template."""

    # exactly one of prompt and messages, neither of them null
    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})

    model: str = ""  # empty: the default model
    prompt: str = None  # type: ignore[assignment]
    messages: list[ChatMessage] = None  # type: ignore[assignment]
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("Give either 'prompt' or 'messages'.", param="prompt")
        return self


class DetokenizeRequest(_Lenient):
    model: str = ""  # empty: the default model
    tokens: list[Annotated[StrictInt, Field(ge=0)]]


# --- success answers (what /openapi.json says each route returns) ---------------------------

class ModelObject(Answer):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    state: ModelState
    error: Optional[str] = None


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelObject]


class TopLogprob(Answer):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Answer):
    content: list[TokenLogprob]
    refusal: None = None


class FunctionCall(Answer):
    name: str
    arguments: str  # JSON text


class ToolCall(Answer):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Answer):
    role: Literal["assistant"]
    content: Optional[str]
    reasoning_content: Optional[str] = None  # the model's thinking, when it reasons
    tool_calls: Optional[list[ToolCall]] = None


class PromptLogprob(Answer):
    """vLLM's prompt_logprobs entry: one token at one position."""

    logprob: float
    rank: Optional[int]
    decoded_token: str


PromptLogprobs = list[Optional[dict[str, PromptLogprob]]]  # per prompt token; None first


class UsageDetails(Answer):
    cached_tokens: int = 0


class Usage(Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[UsageDetails] = None
    completion_tokens_details: Optional[dict[str, int]] = None  # reasoning_tokens


class ChatChoice(Answer):
    index: int
    message: AssistantMessage
    finish_reason: Optional[Literal["stop", "length", "tool_calls"]]
    logprobs: Optional[ChatLogprobs]


class ChatCompletion(Answer):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: Optional[str]
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: Optional[PromptLogprobs] = None  # when the request asked for them


class CompletionLogprobs(Answer):
    tokens: list[str]
    token_logprobs: list[Optional[float]]  # None: a prompt's first token
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(Answer):
    index: int
    text: str
    finish_reason: Optional[Literal["stop", "length"]]
    logprobs: Optional[CompletionLogprobs]
    prompt_logprobs: Optional[PromptLogprobs] = None


class Completion(Answer):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: Optional[str]
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(Answer):
    object: Literal["embedding"]
    index: int
    embedding: Union[list[float], str]  # str: base64 of little-endian float32


class EmbeddingUsage(Answer):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Answer):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenizeAnswer(Answer):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeAnswer(Answer):
    prompt: str


class TokenizerInfo(Answer):
    """vLLM's /tokenizer_info: tokenizer_config.json's fields, and more."""

    tokenizer_class: str
    bos_token: Optional[str]
    eos_token: Optional[str]
    pad_token: Optional[str]
    model_max_length: int
    chat_template: Optional[str] = None


class ChunkDelta(Answer):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # index, id, function: name, arguments


class ChunkChoice(Answer):
    index: int
    delta: ChunkDelta
    finish_reason: Optional[Literal["stop", "length", "tool_calls"]]
    logprobs: Optional[ChatLogprobs]


class ChatCompletionChunk(Answer):
    """One event of a streamed chat completion (its data; `[DONE]` ends the stream)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: Optional[str]
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None  # the last chunk's, with stream_options.include_usage


class CompletionChunk(Completion):
    """One event of a streamed completion (its data; `[DONE]` ends the stream):
    a completion whose usage only the last chunk carries."""

    usage: Optional[Usage] = None  # type: ignore[assignment]
