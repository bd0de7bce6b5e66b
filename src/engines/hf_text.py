"""What the engines that load Hugging Face model folders (MLX, vLLM) share:
a `transformers` tokenizer, the folder's chat template and the same
capabilities."""
from __future__ import annotations

from typing import Any, Optional

from ..core.inference_engine import EngineCapabilities
from .chat_template import ChatTemplate, render_or_refuse


class HFText:
    """Mixed into an engine that sets `_tokenizer` and `_template` at load."""

    model_id: str
    _tokenizer: Any
    _template: Optional[ChatTemplate]
    _context_length: int

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(logprobs=True, prompt_logprobs=True, grammar=True,
                                  tools=bool(self._template and self._template.takes_tools))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, tokens: list[int]) -> str:
        self.check_token_ids(tokens, "tokens")
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
