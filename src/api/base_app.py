"""What both apps share: the Flask set-up and the middleware, in order
(request id, keys, rate limits, CORS, access log, errors). The single
service (app.py) adds the models and the OpenAI routes; the load-balanced
entry point (load_balanced_app.py) adds the cluster and the proxy."""
from __future__ import annotations

import time

from flask import Flask

from ..utils.config import Settings
from ..utils.logger import setup_logging
from . import errors
from .middleware import access_log, auth, cors, rate_limit, request_id


def new_app(settings: Settings, name: str, count_tokens: bool = True) -> Flask:
    setup_logging(settings.log_level, settings.logs_path, settings.log_rotation_mb,
                  settings.log_retention_days)
    app = Flask(name)
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
