"""Schemathesis hooks for tests/api/openapi_fuzz.py (loaded through
SCHEMATHESIS_HOOKS). They keep generated bodies inside what the served tiny
models can do: limits the schema cannot state because they belong to a
model, not to the API (its vocabulary, its embedding size), or relate two
values (a named tool among the tools, paired history lists). Everything
else the fuzzer generates reaches the server as it is."""
from __future__ import annotations

from typing import Any

import schemathesis

VOCABULARY = 256  # both tiny GGUF models: 261 tokens
EMBEDDING_SIZE = 64  # and at least this many dimensions
TOKEN_FIELDS = ("prompt", "input", "tokens")
MAX_OUTPUT = 32  # tokens a generated request may ask for
MAX_BODY_TEXT = 300  # characters of a generated body (its prompt must fit the context)


def _number(value: Any) -> Any:
    """A number as the server reads it (a whole float is an integer), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _ids(value: Any) -> list[float]:
    if _number(value) is not None:
        return [value]
    if isinstance(value, list):
        return [i for v in value for i in _ids(v)]
    return []


SCHEMA_KEYS = {"type", "properties", "required", "additionalProperties", "items", "enum",
               "title", "description"}


def _schemas_in(body: dict) -> list[Any]:
    """The JSON schemas a body asks the output to follow (each face has its field)."""
    fmt = body.get("response_format")
    text = body.get("text")
    found = [body.get("format") if isinstance(body.get("format"), dict) else None]
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        found.append(fmt["json_schema"].get("schema"))
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        found.append(text["format"].get("schema"))
    return [s for s in found if s is not None]


def _enforceable(schema: Any) -> bool:
    """A schema the grammar converter can turn into a grammar: random objects
    are not JSON schemas, and the server says so with a 400."""
    if not isinstance(schema, dict) or not set(schema) <= SCHEMA_KEYS:
        return False
    return schema.get("type", "object") in ("object", "string", "integer", "number", "boolean",
                                            "array", "null")


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Every phase's cases (the coverage phase applies case hooks only)."""
    return _servable(case.body)


def _servable(body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    # the bundled models are real ones: loading them is slow, and their tokenizers drop
    # some characters altogether (an input of those is empty to them: a 400)
    # (and tiny-base has no chat template: most routes refuse it, rightly)
    if body.get("model") not in (None, "", "tiny-chat", "tiny-chat:latest"):
        return False
    if any(i >= VOCABULARY for field in TOKEN_FIELDS for i in _ids(body.get(field))):
        return False
    dimensions = _number(body.get("dimensions"))
    if dimensions is not None and dimensions > EMBEDDING_SIZE:
        return False
    # the served context is 2048 tokens, a byte a token: keep prompt plus output inside it
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        wanted = _number(body.get(field))
        if wanted is not None and wanted > MAX_OUTPUT:
            return False
    if len(repr(body)) > MAX_BODY_TEXT:
        return False
    history = [body.get(k) or [] for k in ("history_input", "history_output")]
    if all(isinstance(h, list) for h in history) and len(history[0]) != len(history[1]):
        return False
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and any(k.isdigit() and int(k) >= VOCABULARY for k in bias):
        return False
    if any(not _enforceable(s) for s in _schemas_in(body)):
        return False
    choice, tools = body.get("tool_choice"), body.get("tools")
    if isinstance(choice, dict) and isinstance(tools, list):
        name = (choice.get("function") or {}).get("name") if isinstance(
            choice.get("function"), dict) else choice.get("name")
        names = [((t.get("function") or {}).get("name") if isinstance(t.get("function"), dict)
                  else t.get("name")) for t in tools if isinstance(t, dict)]
        if name is not None and name not in names:
            return False
        allowed = choice.get("tools")  # the Responses API's allowed_tools
        if isinstance(allowed, list) and not any(isinstance(a, dict) and a.get("name") in names
                                                 for a in allowed):
            return False
    return True
