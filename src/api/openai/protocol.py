"""Request models of the OpenAI face beyond the chat and completion bodies
(those are the serving core's, in ..schemas): embeddings, and vLLM's
/tokenize and /detokenize."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, StrictInt, model_validator

from ...core.exceptions import InvalidRequestError
from ..schemas import MAX_EMBEDDING_INPUTS, ChatMessage, _Lenient


class EmbeddingRequest(_Lenient):
    model: str = ""  # empty: the default model
    input: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    @model_validator(mode="after")
    def _input_not_empty(self) -> "EmbeddingRequest":
        if self.input == "" or self.input == [] or self.input == [""]:
            raise InvalidRequestError("input must not be empty.", param="input")
        if isinstance(self.input, list) and len(self.input) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequestError(f"At most {MAX_EMBEDDING_INPUTS} inputs per request.",
                                      param="input")
        return self

    def inputs(self) -> list[Union[str, list[int]]]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, int) for x in self.input):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)


class TokenizeRequest(_Lenient):
    """vLLM's /tokenize: `prompt`, or `messages` rendered with the chat template."""

    model: str = ""  # empty: the default model
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("Give either 'prompt' or 'messages'.", param="prompt")
        return self


class DetokenizeRequest(_Lenient):
    model: str = ""  # empty: the default model
    tokens: list[StrictInt]
