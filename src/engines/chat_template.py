"""Render a chat with a model's own jinja2 chat template, in a sandbox; and
the checks every engine makes on chats and token ids.

The templates come from model files (GGUF metadata, tokenizer configs), so
they run in jinja2's immutable sandbox with the few helpers that Hugging
Face templates expect.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Optional

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..core.exceptions import InvalidRequestError


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"The model's chat template rejected the messages: {message}",
                              param="messages")


def _tojson(value: Any, indent: Optional[int] = None, ensure_ascii: bool = False,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


# what the renderer itself passes: a request's template kwargs cannot replace them
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt",
                                         "bos_token", "eos_token"})


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        try:
            self._template = _compile(source)
        except TemplateError as exc:
            raise ValueError(f"invalid chat template: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.takes_tools = "tools" in source  # else tools go into a system prompt of ours

    def render(self, messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]] = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        try:
            return self._template.render(messages=messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         **extra)
        except InvalidRequestError:
            raise
        except Exception as exc:  # a template error is the request's shape, not a crash
            raise InvalidRequestError(f"The messages could not be rendered with the model's "
                                      f"chat template: {exc}", param="messages") from exc


def render_or_refuse(template: Optional[ChatTemplate], model_id: str,
                     messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]],
                     add_generation_prompt: bool,
                     template_kwargs: Optional[dict[str, Any]] = None) -> str:
    """The chat rendered with the model's template; a clear 400 for a model without one."""
    if template is None:
        raise InvalidRequestError(
            f"Model '{model_id}' has no chat template, so it cannot serve "
            f"/v1/chat/completions. Use /v1/completions, or set CHAT_TEMPLATE.",
            param="model", code="chat_template_missing")
    return template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                           **(template_kwargs or {}))
