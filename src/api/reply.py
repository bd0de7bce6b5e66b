"""A reply read as it is generated: its reasoning, its answer text and its
tool calls, as events every protocol face turns into its own wire format
(chat completion deltas, Responses API items, /generate's fields)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .reasoning import ReasoningParser
from .tool_calls import Arguments, CallStart, Content, ToolCallParser, ToolSetup


@dataclass
class Reasoning:
    text: str


ReplyEvent = Union[Reasoning, Content, CallStart, Arguments]


class ReplyParser:
    """feed(text, tokens) -> events; the reasoning first, then the answer,
    whose text is read for tool calls when tools may be called."""

    def __init__(self, reasoning: Optional[ReasoningParser], tools: Optional[ToolSetup]):
        self._reasoning = reasoning
        self._tools = ToolCallParser(tools.names) if tools is not None else None
        self._max_calls = tools.max_calls if tools is not None else None
        self.reasoning_tokens = 0

    @property
    def calls(self) -> list[dict]:
        calls = self._tools.calls if self._tools is not None else []
        return calls[:self._max_calls] if self._max_calls else calls

    def feed(self, text: str, tokens: int = 0) -> list[ReplyEvent]:
        if self._reasoning is None:
            return self._answer(text)
        if self._reasoning.reasoning:  # a token that closes the reasoning still counts to it
            self.reasoning_tokens += tokens
        thought, answer = self._reasoning.feed(text)
        return self._thought(thought) + self._answer(answer)

    def finish(self) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        if self._reasoning is not None:
            thought, answer = self._reasoning.finish()
            events = self._thought(thought) + self._answer(answer)
        if self._tools is not None:
            events += self._allowed(self._tools.finish())
        return events

    @staticmethod
    def _thought(text: str) -> list[ReplyEvent]:
        return [Reasoning(text)] if text else []

    def _answer(self, text: str) -> list[ReplyEvent]:
        if self._tools is not None:
            return self._allowed(self._tools.feed(text))
        return [Content(text)] if text else []

    def _allowed(self, events: list) -> list[ReplyEvent]:
        """Events of calls past the limit left out (parallel_tool_calls false: one call)."""
        if not self._max_calls:
            return list(events)
        return [e for e in events
                if not isinstance(e, (CallStart, Arguments)) or e.index < self._max_calls]


def call_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A parsed call's arguments as an object (the Anthropic and Ollama faces
    give them so); {} when the model's JSON was not an object."""
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except ValueError:
        return {}
    return arguments if isinstance(arguments, dict) else {}


@dataclass
class ReplySummary:
    """A whole reply, from its events."""

    reasoning: str = ""
    content: str = ""
    calls: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, events: list[ReplyEvent], calls: list[dict]) -> "ReplySummary":
        return cls("".join(e.text for e in events if isinstance(e, Reasoning)),
                   "".join(e.text for e in events if isinstance(e, Content)), list(calls))
