"""The web console: static files served at /ui (`/` leads browsers there).

The page holds no secret and no state of the server's: it calls the same API
as any client, with the key the user types in (kept in the browser), so the
files themselves are open like /health.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, request, send_from_directory

from ..spec import HTML, TEXT, public, responds

STATIC = Path(__file__).resolve().parents[1] / "console" / "static"
PREFIX = "/ui"

bp = Blueprint("console", __name__, static_folder=str(STATIC),
               static_url_path=f"{PREFIX}/static")


@bp.get("/")
@public
@responds(TEXT, description="'Ollama is running' (browsers are led to /ui/)")
@responds(status=302, description="A browser is led to the console")
def root():
    """A browser is led to the console; any other client gets Ollama's liveness
    answer, which Ollama clients (n8n's credential check) ask for."""
    if "text/html" in request.headers.get("Accept", ""):  # what browsers ask for, by name
        return redirect(f"{PREFIX}/")
    return Response("Ollama is running", mimetype="text/plain")


@bp.get(PREFIX)
@bp.get(f"{PREFIX}/")
@public
@responds(HTML)
def index():
    """The console page."""
    response = send_from_directory(STATIC, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
