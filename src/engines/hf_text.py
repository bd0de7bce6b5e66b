"""What the engines that load Hugging Face model folders (MLX, vLLM) share:
a `transformers` tokenizer, the folder's chat template, the same
capabilities and the same checks on a request before it is queued."""
from __future__ import annotations

from typing import Any, Optional

from ..core.exceptions import (ContextLengthExceededError, InvalidRequestError,
                               ServiceUnavailableError)
from ..core.inference_engine import EngineCapabilities, GenerationRequest
from .chat_template import ChatTemplate, check_token_ids, render_or_refuse


class HFText:
    """Mixed into an engine that sets `_tokenizer`, `_template`, `_vocab_size`
    and `_context_length` at load, and keeps its `_state`."""

    model_id: str
    _state: str
    _tokenizer: Any
    _template: Optional[ChatTemplate]
    _vocab_size: int
    _context_length: int

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(chat_template=self._template is not None, logprobs=True,
                                  prompt_logprobs=True, grammar=True,
                                  tools=bool(self._template and self._template.takes_tools))

    @property
    def context_length(self) -> int:
        return self._context_length

    def _check_request(self, request: GenerationRequest) -> None:
        """A request refused at once (503, 400) rather than failed later."""
        if self._state != "ready":
            raise ServiceUnavailableError(f"Model '{self.model_id}' is {self._state}.")
        if not request.prompt_tokens:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        self._check_tokens(request.prompt_tokens, "prompt")
        wanted = len(request.prompt_tokens) + (1 if request.max_tokens is None
                                               else request.max_tokens)
        if wanted > self._context_length:
            raise ContextLengthExceededError(self._context_length, wanted)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, tokens: list[int]) -> str:
        self._check_tokens(tokens, "tokens")
        return self._tokenizer.decode(tokens)

    def tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's own settings (file paths left out), as vLLM reports them."""
        tokenizer = getattr(self._tokenizer, "_tokenizer", self._tokenizer)  # mlx-lm wraps it
        info = {key: _plain(value) for key, value in
                (getattr(tokenizer, "init_kwargs", None) or {}).items()
                if not key.endswith("_file")}
        info.update(tokenizer_class=type(tokenizer).__name__,
                    bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                    pad_token=tokenizer.pad_token, model_max_length=self._context_length)
        if self._template is not None:
            info["chat_template"] = self._template.source
        return info

    def render_chat(self, messages, tools=None, add_generation_prompt=True,
                    template_kwargs=None) -> str:
        return render_or_refuse(self._template, self.model_id, messages, tools,
                                add_generation_prompt, template_kwargs)

    def _check_tokens(self, tokens: list[int], param: str) -> None:
        check_token_ids(tokens, self._vocab_size, param)

    def _template_from(self, tokenizer: Any, options: Any) -> Optional[ChatTemplate]:
        """A per-model template file first, then the folder's own, then CHAT_TEMPLATE."""
        source = (options.chat_template_override
                  or getattr(tokenizer, "chat_template", None) or options.chat_template)
        if not source:
            return None
        return ChatTemplate(source, bos_token=tokenizer.bos_token or "",
                            eos_token=tokenizer.eos_token or "")


def _plain(value: Any) -> Any:
    """A tokenizer setting as JSON: special tokens (AddedToken) as their text."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(getattr(value, "content", value))
