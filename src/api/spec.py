"""What a route declares about itself, read by the middleware and by the
OpenAPI document (/openapi.json), so that the two cannot disagree:

- `public`: no API key is asked for (/health, the console, `/`);
- `accepts(Model)`: the JSON body, validated with that model and handed to the view;
- `responds(...)`: its success answers, each a media type with the pydantic
  model of the JSON it returns; a stream of server-sent events (`SSE`, or
  `sse(Model)` when each event's data is JSON of that model); or text.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict

from .request_parsing import parse_body

V = TypeVar("V", bound=Callable[..., Any])
JSON = "application/json"
SSE_MEDIA = "text/event-stream"
NDJSON = "application/x-ndjson"
TEXT = "text/plain"
HTML = "text/html"


@dataclass(frozen=True)
class Events:
    """Server-sent events; `data` is JSON of `model` when one is given (and
    the `[DONE]` that ends an OpenAI stream)."""

    model: Optional[type[BaseModel]] = None


def sse(model: type[BaseModel]) -> Events:
    return Events(model)


SSE = Events()  # events whose data the document does not describe further


# a model (a JSON body), server-sent events, or a media type whose body is text
Declared = Union[type[BaseModel], Events, str]


class Answer(BaseModel):
    """A success answer's shape: the fields this server always sends are
    required; an answer may carry more (extensions clients ignore)."""

    model_config = ConfigDict(extra="allow")


def requires_when(field: str, values: list[Any], needed: str, key: str = "") -> dict[str, Any]:
    """JSON Schema for a rule between two fields: when `field` (or its `key`)
    is one of `values`, `needed` must be given, not null and not empty."""
    test: dict[str, Any] = {"enum": values}
    if key:
        test = {"type": "object", "required": [key], "properties": {key: test}}
    return {"if": {"required": [field], "properties": {field: test}},
            "then": {"required": [needed], "properties": {needed: {
                "not": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}}}}}


def public(view: V) -> V:
    view.public = True  # type: ignore[attr-defined]
    return view


def is_public(view: Optional[Callable[..., Any]], endpoint: Optional[str]) -> bool:
    """A route marked public, or a blueprint's static files (the console's)."""
    if endpoint is not None and endpoint.split(".")[-1] == "static":
        return True
    return bool(getattr(view, "public", False))


def accepts(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The view is called with the JSON body validated as `model` (a 400 that
    names the bad field otherwise), before the URL's own arguments."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def parsed(**url_args: Any) -> Any:
            return view(parse_body(model), **url_args)

        parsed.request_model = model  # type: ignore[attr-defined]
        return parsed

    return wrap


def responds(*answers: Declared, status: int = 200,
             description: str = "OK") -> Callable[[V], V]:
    """The answers of one status: models are JSON bodies, `SSE` / `sse(Model)`
    event streams, a media type (NDJSON, TEXT, HTML) a text body. Several
    answers: the request picks one (`stream`, or what the client accepts)."""

    def mark(view: V) -> V:
        declared = dict(getattr(view, "responses", {}))
        declared[status] = (description, answers)
        view.responses = declared  # type: ignore[attr-defined]
        return view

    return mark
