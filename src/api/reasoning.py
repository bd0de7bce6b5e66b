"""Reasoning models: tell a reply's thinking from its answer.

Qwen3, QwQ and the DeepSeek-R1 distills write their reasoning between
`<think>` and `</think>` before the answer; some chat templates open the
tag in the generation prompt themselves, so the reply starts inside it.
A model's `reasoning_parser` setting (models.yaml or the load request) says
how to read its replies:

- `auto` (the default): a reply that opens with `<think>` is split, and so
  is one whose prompt ended by opening the tag;
- `think_tags`: the model always reasons first: the text up to `</think>`
  is reasoning, whether or not the reply opened the tag;
- `none`: nothing is split, the reply is the answer as written.

The parser reads a reply a piece at a time, holding back only what may be
the start of a tag, so reasoning streams as it is written.
"""
from __future__ import annotations

from typing import Optional

THINK_START, THINK_END = "<think>", "</think>"
REASONING_PARSERS = ("auto", "think_tags", "none")


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an opened `<think>`."""
    return prompt.rstrip().endswith(THINK_START)


def reasoning_parser_for(mode: Optional[str], prompt: str) -> Optional["ReasoningParser"]:
    """The parser for a reply to `prompt` under a model's setting, or None."""
    mode = mode or "auto"
    if mode == "none":
        return None
    return ReasoningParser(inside=mode == "think_tags" or prompt_opens_reasoning(prompt))


def _held_back(text: str, tag: str) -> int:
    """Length of the longest end of `text` that may begin `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningParser:
    """feed(text) -> (reasoning, answer) of what can be told apart so far."""

    def __init__(self, inside: bool):
        # "start": a leading <think> may come; "reasoning"; "answer"
        self._state = "reasoning" if inside else "start"
        self._buf = ""
        self._answer_started = False  # whitespace right after </think> is dropped
        self._reasoning_started = False  # and so is whitespace right after <think>

    @property
    def reasoning(self) -> bool:
        """Whether text fed now would (still) count as reasoning."""
        return self._state != "answer"

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        reasoning, answer = "", ""
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(THINK_START):
                self._state, self._buf = "reasoning", head[len(THINK_START):]
            elif not head or THINK_START.startswith(head):
                return "", ""  # blank so far, or perhaps the tag
            else:  # no reasoning: the reply is the answer, exactly as written
                self._state, self._answer_started = "answer", True
        if self._state == "reasoning":
            at = self._buf.find(THINK_END)
            if at < 0:
                keep = _held_back(self._buf, THINK_END)
                cut = len(self._buf) - keep
                ready, self._buf = self._buf[:cut], self._buf[cut:]
                # trailing whitespace waits: it is dropped when the reasoning ends there
                body = ready.rstrip()
                self._buf = ready[len(body):] + self._buf
                return self._reasoning_text(body), ""
            reasoning = self._reasoning_text(self._buf[:at].rstrip())
            self._state, self._buf = "answer", self._buf[at + len(THINK_END):]
        if self._state == "answer":
            answer, self._buf = self._buf, ""
            if not self._answer_started:
                answer = answer.lstrip()
                self._answer_started = bool(answer)
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """What is left at the end: a reply cut short inside its reasoning
        keeps it as reasoning; a lone partial tag is answer text."""
        rest, self._buf = self._buf, ""
        if self._state == "reasoning":
            return self._reasoning_text(rest.rstrip()), ""
        self._state = "answer"
        return "", rest

    def _reasoning_text(self, text: str) -> str:
        if not self._reasoning_started:
            text = text.lstrip()
            self._reasoning_started = bool(text)
        return text
