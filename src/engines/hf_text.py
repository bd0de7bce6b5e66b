"""The text side shared by the engines that load Hugging Face model folders
(MLX, vLLM): a `transformers` tokenizer and the folder's chat template."""
from __future__ import annotations

from typing import Any, Optional

from .chat_template import ChatTemplate, check_token_ids, render_or_refuse


class HFText:
    """Mixed into an engine that sets `_tokenizer`, `_template` and `_vocab_size` at load."""

    model_id: str
    _tokenizer: Any
    _template: Optional[ChatTemplate]
    _vocab_size: int

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, tokens: list[int]) -> str:
        self._check_tokens(tokens, "tokens")
        return self._tokenizer.decode(tokens)

    def render_chat(self, messages, tools=None, add_generation_prompt=True) -> str:
        return render_or_refuse(self._template, self.model_id, messages, tools,
                                add_generation_prompt)

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
