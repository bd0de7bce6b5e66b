"""Ollama's API requests, as pydantic models: what Open WebUI, n8n's and
Dify's Ollama nodes, Continue and the `ollama` SDKs send to `/api/*`."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field

from ..schemas import MAX_MESSAGES, MAX_TOOLS, _Lenient

KeepAlive = Optional[Union[str, int, float]]


class OllamaMessage(_Lenient):
    role: str
    content: Optional[str] = ""
    thinking: Optional[str] = None
    images: Optional[list[Any]] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_name: Optional[str] = None


class _Generation(_Lenient):
    model: str = Field(min_length=1)
    format: Optional[Union[str, dict[str, Any]]] = None
    options: Optional[dict[str, Any]] = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: KeepAlive = None
    think: Optional[Union[bool, str]] = None


class ChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)
    tools: Optional[list[dict[str, Any]]] = Field(None, max_length=MAX_TOOLS)


class GenerateRequest(_Generation):
    prompt: str = ""
    system: Optional[str] = None
    suffix: Optional[str] = None
    raw: bool = False
    images: Optional[list[Any]] = None


class EmbedRequest(_Lenient):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    dimensions: Optional[int] = Field(None, ge=1)
    keep_alive: KeepAlive = None


class LegacyEmbeddingsRequest(_Lenient):
    model: str = Field(min_length=1)
    prompt: str
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
