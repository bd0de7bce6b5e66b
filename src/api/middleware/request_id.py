"""One request id per request: the client's X-Request-ID, or a fresh one.
It is echoed in the response and bound to every log line of the request."""
from __future__ import annotations

import re
import time
import uuid

from flask import Flask, g, request
from loguru import logger

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def install(app: Flask) -> None:
    @app.before_request
    def _assign() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _VALID.match(given) else uuid.uuid4().hex
        g.started = time.monotonic()

    @app.after_request
    def _echo(response):
        rid = getattr(g, "request_id", None)
        if rid:
            response.headers["X-Request-ID"] = rid
            elapsed_ms = (time.monotonic() - g.started) * 1000
            logger.bind(request_id=rid).info("{} {} -> {} ({:.1f} ms to headers)", request.method,
                                             request.path, response.status_code, elapsed_ms)
        return response
