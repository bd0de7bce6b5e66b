"""Tool calling: the tools into the prompt, the calls out of the model's text.

A model whose chat template takes `tools` gets them there; any other model
gets a system prompt of ours that asks for Hermes-style calls
(`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`). `required`
and a named `tool_choice` constrain the output to a JSON call (a grammar from
a JSON schema), so they always yield a valid call. The parser reads the
common formats: Hermes/Qwen `<tool_call>` JSON, a bare JSON call or list of
calls (Llama 3 style, with or without `<|python_tag|>`, and what the grammar
produces), and Mistral's `[TOOL_CALLS] [...]`, incrementally, so a stream sends the call's name first
and its arguments in pieces as the model writes them.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..core.exceptions import InvalidRequestError

HERMES_START, HERMES_END, MISTRAL_START = "<tool_call>", "</tool_call>", "[TOOL_CALLS]"
LLAMA3_START = "<|python_tag|>"  # Llama 3.1+ may open a JSON call with it
_MARKERS = (HERMES_START, MISTRAL_START, LLAMA3_START)
# a call whose name comes first: its arguments can stream as they are written
_LIST_OF_OBJECTS = re.compile(r"\[\s*\{")
_NAME_FIRST = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"'
                         r'\s*:\s*')


@dataclass
class ToolSetup:
    tools: list[dict[str, Any]]
    choice: str  # "auto" | "required" | the name of the one function to call
    parallel: bool
    max_calls: Optional[int] = None  # calls past it are dropped; 1 without parallel calls

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def call_schema(self) -> Optional[dict[str, Any]]:
        """The JSON schema the reply must follow: None when the model may also answer in text."""
        if self.choice == "auto":
            return None

        def one(tool: dict[str, Any]) -> dict[str, Any]:
            fn = tool["function"]
            return {"type": "object", "additionalProperties": False,
                    "required": ["name", "arguments"],
                    "properties": {"name": {"const": fn["name"]},
                                   "arguments": fn.get("parameters") or {"type": "object"}}}

        if self.choice != "required":
            return one(next(t for t in self.tools if t["function"]["name"] == self.choice))
        calls = [one(t) for t in self.tools]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        return {"type": "array", "minItems": 1, "items": call} if self.parallel else call


def tool_setup(tools: Optional[list[dict[str, Any]]], tool_choice: Optional[str],
               parallel: Optional[bool], max_calls: Optional[int] = None) -> Optional[ToolSetup]:
    """The request's tools (their shape checked by the request's schema) and
    tool_choice (none / auto / required / a function's name) together, or
    None when no tool may be called."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice needs tools.", param="tool_choice")
        return None
    choice = tool_choice if tool_choice is not None else "auto"
    if choice == "none":
        return None
    setup = ToolSetup(list(tools), choice, parallel is not False,
                      max_calls if parallel is not False else 1)
    if choice not in ("auto", "required") and choice not in setup.names:
        raise InvalidRequestError(f"tool_choice names '{choice}', which is not among the tools.",
                                  param="tool_choice")
    return setup


def prompt_messages(messages: list[dict[str, Any]], setup: Optional[ToolSetup],
                    template_takes_tools: bool) -> tuple[list[dict[str, Any]], Any]:
    """The messages (and `tools` argument) to render: the model's own template
    when it takes tools, else our tool prompt and the history as text."""
    if template_takes_tools:
        return messages, setup.tools if setup else None
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(f"{HERMES_START}\n{json.dumps(_call_json(c), ensure_ascii=False)}"
                              f"\n{HERMES_END}" for c in m["tool_calls"])
            text = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{text}\n{calls}".strip()})
        elif m["role"] in ("tool", "function"):
            out.append({"role": "user",
                        "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        else:
            out.append(m)
    if setup is None:
        return out, None
    prompt = _tool_prompt(setup.tools)
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _call_json(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    arguments = fn.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        pass  # a client's own malformed history: shown as it is
    return {"name": fn.get("name", ""), "arguments": arguments}


def _tool_prompt(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You can call functions to help answer. These are the functions, one JSON "
            f"signature a line, between <tools> tags:\n<tools>\n{listed}\n</tools>\n\n"
            "To call one, answer with a JSON object holding its name and arguments, between "
            f"{HERMES_START} tags, like this:\n{HERMES_START}\n"
            '{"name": "function_name", "arguments": {"argument": "value"}}\n'
            f"{HERMES_END}\nYou may make several calls, one block each. "
            "If no function helps, answer normally.")


@dataclass
class Content:
    text: str


@dataclass
class CallStart:
    index: int
    id: str
    name: str


@dataclass
class Arguments:
    index: int
    text: str


Event = Union[Content, CallStart, Arguments]


class ToolCallParser:
    """Reads a reply as it is generated and tells text from tool calls."""

    def __init__(self, names: set[str]):
        self._names = names
        self._buf = ""  # text not yet turned into events
        self._in_calls = False
        self._started = False  # any non-blank text seen: a bare JSON call only counts first
        self._obj: Optional[_ObjectScan] = None
        self.calls: list[dict[str, Any]] = []  # {"id", "name", "arguments"}

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        events: list[Event] = []
        while True:
            progressed = self._step_calls(events) if self._in_calls else self._step_text(events)
            if not progressed:
                return events

    def finish(self) -> list[Event]:
        events = self.feed("")
        if self._obj is not None and not self._obj.announced:
            self._buf = self._obj.text + self._buf  # a call cut short: show it as text
        self._obj = None
        if self._buf.strip() and not (self._in_calls and self._buf.strip() in "]" + HERMES_END):
            events.append(Content(self._buf))
        self._buf = ""
        return events

    # text ----------------------------------------------------------------------
    def _step_text(self, events: list[Event]) -> bool:
        buf = self._buf
        hits = [(buf.find(m), m) for m in _MARKERS if m in buf]
        if hits:
            at, marker = min(hits)
            if buf[:at].strip():
                events.append(Content(buf[:at]))
            self._buf, self._in_calls, self._started = buf[at + len(marker):], True, True
            return True
        if not self._started:
            stripped = buf.lstrip()
            if not stripped or _partial_marker(stripped) == len(stripped):
                return False  # blank, or perhaps the start of a marker
            if stripped[0] == "[" and not stripped[1:].strip():
                return False  # a list: of calls, or of something else?
            if stripped[0] == "{" or _LIST_OF_OBJECTS.match(stripped):
                self._in_calls, self._started, self._buf = True, True, stripped
                return True
        keep = _partial_marker(buf)
        if len(buf) > keep:
            events.append(Content(buf[:len(buf) - keep]))
            self._buf = buf[len(buf) - keep:]
            self._started = self._started or bool(events[-1].text.strip())
        return False

    # calls -----------------------------------------------------------------------
    def _step_calls(self, events: list[Event]) -> bool:
        if self._obj is None:
            rest = self._buf.lstrip(" \t\r\n,[]")
            for marker in (HERMES_END, HERMES_START):
                if rest.startswith(marker):
                    self._buf = rest[len(marker):]
                    return True
            if not rest or any(m.startswith(rest) for m in (HERMES_END, HERMES_START)):
                self._buf = rest
                return False
            if rest[0] != "{":  # text after the calls
                self._in_calls, self._buf = False, rest
                return True
            self._obj, self._buf = _ObjectScan(), rest
        obj = self._obj
        consumed = obj.scan(self._buf)
        self._buf = self._buf[consumed:]
        if not obj.announced:
            match = _NAME_FIRST.match(obj.text)
            if match and json.loads(f'"{match.group(1)}"') in self._names \
                    and obj.text[match.end():match.end() + 1] == "{":
                self._announce(events, json.loads(f'"{match.group(1)}"'), obj)
                obj.args_start = match.end()
        if obj.announced and obj.args_start is not None:
            end = _object_end(obj.text, obj.args_start) or len(obj.text)
            if end > obj.args_sent:
                piece = obj.text[max(obj.args_sent, obj.args_start):end]
                obj.args_sent = end
                self.calls[-1]["arguments"] += piece
                events.append(Arguments(len(self.calls) - 1, piece))
        if not obj.done:
            return False
        self._obj = None
        if not obj.announced:  # complete: read it whole
            try:
                value = json.loads(obj.text)
            except ValueError:
                value = None
            name = value.get("name") if isinstance(value, dict) else None
            if name not in self._names:  # not a call of ours: it was text after all
                events.append(Content(obj.text))
                self._in_calls = False
                return True
            arguments = value.get("arguments", value.get("parameters", {}))
            self._announce(events, name, obj)
            text = arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                           ensure_ascii=False)
            self.calls[-1]["arguments"] = text
            events.append(Arguments(len(self.calls) - 1, text))
        return True

    def _announce(self, events: list[Event], name: str, obj: "_ObjectScan") -> None:
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        self.calls.append({"id": call_id, "name": name, "arguments": ""})
        obj.announced = True
        events.append(CallStart(len(self.calls) - 1, call_id, name))


class _ObjectScan:
    """A JSON object read a piece at a time, and how much of its arguments
    (the object value that starts at `args_start`) has been sent."""

    def __init__(self) -> None:
        self.text = ""
        self.depth = 0
        self.in_string = self.escaped = False
        self.done = False
        self.announced = False
        self.args_start: Optional[int] = None
        self.args_sent = 0

    def scan(self, more: str) -> int:
        """Take characters of `more` up to the object's end; return how many."""
        for i, ch in enumerate(more):
            self.text += ch
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(more)


def _object_end(text: str, start: int) -> Optional[int]:
    """The end of the JSON object that begins at text[start], if it is complete."""
    scan = _ObjectScan()
    used = scan.scan(text[start:])
    return start + used if scan.done else None


def _partial_marker(text: str) -> int:
    """Length of the longest end of `text` that may begin a marker."""
    best = 0
    for marker in _MARKERS:
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if marker.startswith(text[-n:]):
                best = max(best, n)
                break
    return best


def message_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
