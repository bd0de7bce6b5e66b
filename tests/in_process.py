"""The in-process layer: the service's own Flask app, with the real tiny
engines, in the test process. Requests go through Flask's test client, the
openai SDK through httpx's WSGI transport: no socket, no Gunicorn, no
process to start. For protocol and serving behaviour; what needs a process
(gevent, signals, client disconnects, the cluster, the real clients' own
transports) keeps a real server (conftest.start_server)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from src.api import extensions as ext
from src.api.app import create_app
from src.utils.config import Settings
from tests.helpers import wait_until

BASE = "http://in-process"  # what the SDKs are told; nothing listens there


@dataclass
class InProcess:
    app: Flask
    http: FlaskClient

    def client(self, **kwargs: Any):
        """The openai SDK, talking to the app over WSGI."""
        import httpx
        from openai import OpenAI

        transport = httpx.WSGITransport(app=self.app)
        return OpenAI(base_url=f"{BASE}/v1", http_client=httpx.Client(transport=transport),
                      **{"api_key": "test-key", "max_retries": 0, **kwargs})

    def stop(self) -> None:
        manager = ext.model_manager.of(self.app)
        if manager is not None:
            manager.shutdown()


def start_app(tmp_path: Path, **settings: Any) -> InProcess:
    """The app with these settings (names as the environment variables', in
    lower case), once /health says a model is ready."""
    values = {"log_dir": tmp_path / "logs", "data_dir": tmp_path / "data",
              "max_cpu_threads": 1, "metrics_interval": 0,
              "model_base_path": tmp_path / "no-models", **settings}
    app = create_app(Settings(**values))
    http = app.test_client()
    wait_until(lambda: http.get("/health").status_code == 200, 120, "a model ready")
    return InProcess(app, http)
