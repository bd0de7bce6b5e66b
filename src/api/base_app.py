"""What both apps share: the Flask set-up and the middleware, in order
(request id, keys, rate limits, CORS, access log, errors). The single
service (app.py) adds the models and the OpenAI routes; the load-balanced
entry point (load_balanced_app.py) adds the cluster and the proxy."""
from __future__ import annotations

import time

from flask import Flask
from werkzeug.routing import PathConverter

from ..utils.config import Settings
from ..utils.logger import setup_logging
from . import errors
from .middleware import access_log, auth, cors, rate_limit, request_id


class ModelIdConverter(PathConverter):
    """A model id in a path: it may hold slashes (org/model), but is not
    `load` (POST /v1/models/load's) nor under `pull` (the pull routes'), and
    never ends in the /status or /unload that the routes about a model add
    after it."""

    regex = r"(?!load$)(?!pull(?:/|$))(?:(?!/(?:status|unload)$)[^\x00])+?"


def new_flask(name: str) -> Flask:
    app = Flask(name)
    app.url_map.converters["model_id"] = ModelIdConverter
    return app


def new_app(settings: Settings, name: str, count_tokens: bool = True) -> Flask:
    setup_logging(settings.log_level, settings.logs_path, settings.log_rotation_mb,
                  settings.log_retention_days)
    app = new_flask(name)
    app.config.update(SETTINGS=settings, STARTED_AT=time.time(), JSON_SORT_KEYS=False,
                      MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    request_id.install(app)
    auth.install(app, settings)
    rate_limit.install(app, settings, count_tokens)
    cors.install(app, settings)
    access_log.install(app)
    errors.install(app)
    return app
