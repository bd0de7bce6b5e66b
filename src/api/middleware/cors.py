"""CORS for browser clients (CORS_ORIGINS: comma-separated origins, or *).
Off by default: a browser page from another origin cannot call the API."""
from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from ...utils.config import Settings

# what a browser client may read of an answer besides the simple headers
EXPOSED = ["X-Request-ID", "Retry-After", "x-ratelimit-limit-requests",
           "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
           "x-ratelimit-reset-tokens"]


def install(app: Flask, settings: Settings) -> None:
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # any request header: the OpenAI SDKs send their own (x-stainless-*)
        CORS(app, origins="*" if "*" in origins else origins, expose_headers=EXPOSED,
             max_age=600)
