"""GET /openapi.json: every route of the app as it declares itself (see
spec.py): request bodies and success answers from the pydantic models that
validate and shape them, errors in the shape of the face that answers,
no key asked of the public routes. The load-balanced entry point relays to
its instances: its document holds their routes as the single service
declares them, and its own. Which routes ask for a key follows this
server's configuration: none without keys, the admin routes with only an
ADMIN_API_KEY, all but the public ones with API_KEYS."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from werkzeug.routing import Rule
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from .. import __version__
from . import errors, extensions as ext
from .base_app import ModelIdConverter, new_flask
from .spec import JSON, SSE_MEDIA, Events, is_public

# what the routes' converter takes as a model id (base_app.ModelIdConverter)
PATH_PARAMETERS = {"model_id": {"type": "string", "minLength": 1,
                                "pattern": f"^(?:{ModelIdConverter.regex})$"}}
STATIC_ANSWER = {200: ("A file of the web console", ("*/*",))}


KEY = [{"bearer": []}, {"api_key": []}]  # either header


def build_openapi(app: Flask) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    keys = ext.keys.of(app)
    guarded = _Guard(users=bool(keys and keys.users_need_keys),
                     admin=bool(keys and keys.enabled))
    relays_the_rest = False
    for rule, method, view in _operations(app):
        if getattr(view, "relays", False):
            if "<path:path>" in rule.rule:  # everything else goes to an instance
                relays_the_rest = True
                continue
            found = _service_operation(rule.rule, method)
            if found is None:
                continue
            rule, view = found
        _add(paths, components, rule, method, view, guarded)
    if relays_the_rest:
        for rule, method, view in _operations(_service_app()):
            if method.lower() not in paths.get(_openapi_path(rule), {}):
                _add(paths, components, rule, method, view, guarded)
    return {"openapi": "3.1.0",
            "info": {"title": "vllm-obtain", "version": __version__,
                     "description": "An OpenAI-compatible inference service, with the "
                                    "Anthropic Messages and Ollama APIs over the same core."},
            "paths": dict(sorted(paths.items())),
            "components": {"schemas": components, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A key of API_KEYS, or ADMIN_API_KEY"},
                "api_key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                            "description": "The same keys, as Anthropic's clients send them"}}}}


@dataclass(frozen=True)
class _Guard:
    users: bool  # API_KEYS: every route but the public ones asks for a key
    admin: bool  # any key configured: the admin routes ask for one

    def asks(self, view: Callable[..., Any], endpoint: str) -> bool:
        if is_public(view, endpoint):
            return False
        return self.users or (self.admin and getattr(view, "admin_only", False))


def _operations(app: Flask):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":  # Flask's own static folder: this app has none
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method, app.view_functions[rule.endpoint]


@functools.lru_cache(maxsize=1)
def _service_app() -> Flask:
    """The single service's routes, with nothing behind them: what the
    load-balanced entry point's instances answer."""
    from .app import BLUEPRINTS

    bare = new_flask(__name__)
    for blueprint in BLUEPRINTS:
        bare.register_blueprint(blueprint)
    return bare


def _service_operation(path: str, method: str) -> Optional[tuple[Rule, Callable[..., Any]]]:
    for rule, m, view in _operations(_service_app()):
        if rule.rule == path and m == method:
            return rule, view
    return None


def _openapi_path(rule: Rule) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule.rule)


def _add(paths: dict[str, Any], components: dict[str, Any], rule: Rule, method: str,
         view: Callable[..., Any], guarded: _Guard) -> None:
    summary = (view.__doc__ or rule.endpoint.split(".")[-1].replace("_", " ")).strip()
    operation: dict[str, Any] = {
        "operationId": f"{rule.endpoint}:{rule.rule}:{method}".replace("/", "_"),
        "summary": summary.splitlines()[0],
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1})}
                       for name in sorted(rule.arguments)],
        "responses": {},
    }
    declared = STATIC_ANSWER if rule.endpoint.endswith(".static") else view.responses
    for status, (description, answers) in sorted(declared.items()):
        answer: dict[str, Any] = {"description": description}
        content = {}
        for item in answers:
            if isinstance(item, Events):
                content[SSE_MEDIA] = {"schema": _event_schema(components, item)}
            elif isinstance(item, str):
                content[item] = {"schema": {"type": "string"}}
            else:
                content[JSON] = {"schema": _ref(components, item)}
        if content:
            answer["content"] = content
        operation["responses"][str(status)] = answer
    error = errors.error_model(Request(EnvironBuilder(path=_sample_path(rule)).get_environ()))
    operation["responses"]["default"] = {"description": "An error, in this face's shape",
                                         "content": {JSON: {"schema": _ref(components, error)}}}
    if guarded.asks(view, rule.endpoint):
        operation["security"] = KEY
        operation["responses"]["401"] = {"description": "No key, or one this server does "
                                                        "not know",
                                         "content": {JSON: {"schema": _ref(components, error)}}}
    if getattr(view, "admin_only", False):
        operation["x-admin-only"] = True  # ADMIN_API_KEY when one is set
    body = getattr(view, "request_model", None)
    if body is not None and method != "GET":
        operation["requestBody"] = {"required": True,
                                    "content": {JSON: {"schema": _ref(components, body,
                                                                      request=True)}}}
    paths.setdefault(_openapi_path(rule), {})[method.lower()] = operation


def _event_schema(components: dict[str, Any], events: Events) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.2's way of describing a stream):
    its `data` is text, JSON of the event model where the route names one."""
    data: dict[str, Any] = {"type": "string"}
    if events.model is not None:  # JSON of the model, or the [DONE] that ends the stream
        data = {"anyOf": [{"const": "[DONE]"}, {
            "type": "string", "contentMediaType": JSON,
            "contentSchema": _ref(components, events.model)}]}
    return {"type": "object", "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": data,
                           "id": {"type": "string"}, "retry": {"type": "integer"}}}


def _sample_path(rule: Rule) -> str:
    return re.sub(r"<[^>]+>", "x", rule.rule)


class _RequestSchema(GenerateJsonSchema):
    """A request's strings: no NUL character (the server refuses them, see
    request_parsing)."""

    def str_schema(self, schema: Any) -> dict[str, Any]:
        out = super().str_schema(schema)
        out.setdefault("pattern", NO_NUL)
        return out


NO_NUL = "^[^\\u0000]*$"
JSON_VALUE = "JsonValue"  # any JSON without a NUL character: what free-form parts may hold
_JSON_VALUE_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_JSON_VALUE = {"anyOf": [
    {"type": "string", "pattern": NO_NUL}, {"type": "number"}, {"type": "boolean"},
    {"type": "null"}, {"type": "array", "items": _JSON_VALUE_REF},
    {"type": "object", "propertyNames": {"pattern": NO_NUL},
     "additionalProperties": _JSON_VALUE_REF}]}
_SUBSCHEMAS = ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not", "if", "then", "else")


def _free_parts_without_nul(schema: Any) -> Any:
    """Free-form values (Any, dict[str, Any], the unknown fields a request may
    carry) as JSON without NUL characters, as the server takes them."""
    if not isinstance(schema, dict):
        return schema
    if not schema or set(schema) <= {"title", "description", "default"}:
        return {**schema, **_JSON_VALUE_REF}
    out = dict(schema)
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), list):
            out[key] = [_free_parts_without_nul(s) for s in out[key]]
        elif isinstance(out.get(key), dict):
            out[key] = _free_parts_without_nul(out[key])
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _free_parts_without_nul(v) for k, v in out[key].items()}
    if out.get("type") == "object":
        out.setdefault("propertyNames", {"pattern": NO_NUL})
        extra = out.get("additionalProperties", True)
        out["additionalProperties"] = _JSON_VALUE_REF if extra is True \
            else _free_parts_without_nul(extra)
    return out


def _ref(components: dict[str, Any], model: type[BaseModel],
         request: bool = False) -> dict[str, str]:
    name = model.__name__
    if name not in components:
        schema = model.model_json_schema(
            ref_template="#/components/schemas/{model}",
            schema_generator=_RequestSchema if request else GenerateJsonSchema)
        parts = {**schema.pop("$defs", {}), name: schema}
        if request:
            parts = {k: _free_parts_without_nul(v) for k, v in parts.items()}
            parts[JSON_VALUE] = _JSON_VALUE
        for part, part_schema in parts.items():
            if components.setdefault(part, part_schema) != part_schema:
                raise ValueError(f"Two models are named {part}: components need unique names")
    return {"$ref": f"#/components/schemas/{name}"}
