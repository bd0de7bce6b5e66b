"""One request id per request: the client's X-Request-ID, or a fresh one.
It is echoed in the response and put in every log line of the request."""
from __future__ import annotations

import re
import time
import uuid
from typing import Optional

from flask import Flask, g, has_request_context, request

from ...utils.logger import set_request_id_provider

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> Optional[str]:
    return g.get("request_id") if has_request_context() else None


def install(app: Flask) -> None:
    set_request_id_provider(current_request_id)

    @app.before_request
    def _assign() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _VALID.match(given) else uuid.uuid4().hex
        g.started = time.monotonic()

    @app.after_request
    def _echo(response):
        rid = g.get("request_id")
        if rid:
            response.headers["X-Request-ID"] = rid
        return response
