"""GET /openapi.json: every route of the app, with the request bodies taken
from the pydantic schemas that validate them."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel

from .. import __version__
from .openai.protocol import DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from .openai.responses_protocol import ResponsesRequest
from .routes.custom_protocol import GenerateRequest
from .schemas import (ChatCompletionRequest, ClusterRestartRequest, ClusterScaleRequest,
                      ClusterStrategyRequest, ClusterUpstreamRequest, CompletionRequest,
                      LoadModelRequest)

# path -> the schema of its JSON body (the single service and the
# load-balanced entry point, which passes the same bodies on, share them)
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest, "/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest, "/embeddings": EmbeddingRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
    "/v1/responses": ResponsesRequest, "/responses": ResponsesRequest,
    "/generate": GenerateRequest,
    "/v1/models/load": LoadModelRequest,
    "/v1/cluster/scale": ClusterScaleRequest,
    "/v1/cluster/strategy": ClusterStrategyRequest,
    "/v1/cluster/restart": ClusterRestartRequest,
    "/v1/cluster/upstreams": ClusterUpstreamRequest,
}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def build_openapi(app: Flask) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        summary = (view.__doc__ or rule.endpoint.split(".")[-1].replace("_", " ")).strip()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "operationId": f"{rule.endpoint}:{rule.rule}:{method}".replace("/", "_"),
                "summary": summary.splitlines()[0],
                "parameters": [{"name": name, "in": "path", "required": True,
                                "schema": {"type": "string"}} for name in rule.arguments],
                "responses": {"200": {"description": "OK"},
                              "default": {"description": "An OpenAI-shaped error",
                                          "content": {"application/json": {
                                              "schema": {"$ref": "#/components/schemas/Error"}}}}}}
            if getattr(view, "admin_only", False):
                operation["x-admin-only"] = True  # ADMIN_API_KEY when one is set
            body = REQUEST_BODIES.get(rule.rule)
            if body is not None and method != "GET":
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{_add_schema(components, body)}"}}}}
            paths.setdefault(path, {})[method.lower()] = operation
    return {"openapi": "3.1.0",
            "info": {"title": "vllm-obtain", "version": __version__,
                     "description": "An OpenAI-compatible inference service."},
            "paths": paths, "security": [{"bearer": []}],
            "components": {"schemas": components, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "API_KEYS / ADMIN_API_KEY, when set"}}}}


def _add_schema(components: dict[str, Any], model: type[BaseModel]) -> str:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return model.__name__
