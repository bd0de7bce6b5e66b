"""Fixtures: the tiny generated model, and real servers started with run.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests

from tests.scripted_model import write_test_models
from tests.tiny_model import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "node"
SMOL = "SmolLM2-135M-Instruct"  # the bundled default model of the test servers
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def run_node_check(script: str, *args: str) -> dict:
    """Run a client check under tests/node (its packages installed first where
    `make test` has not) and read the one JSON object it prints."""
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if not all((NODE_DIR / "node_modules" / name).is_dir() for name in wanted):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=300)
    out = subprocess.run(["node", str(NODE_DIR / script), *args], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A MODEL_BASE_PATH with two tiny models: one with a chat template, one without."""
    folder = tmp_path_factory.mktemp("models")
    write_tiny_model(folder / "tiny-chat.gguf")
    write_tiny_model(folder / "tiny-base.gguf", chat_template=False, seed=99)
    return folder


@pytest.fixture(scope="session")
def tiny_model(model_dir) -> Path:
    return model_dir / "tiny-chat.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def json_lines(path: Path) -> list[dict]:
    """The entries of a JSON-lines log, leaving out a last line still being written."""
    whole = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    clients: list = field(default_factory=list)  # closed at the stop (see stop_server)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs):
        from openai import OpenAI

        client = OpenAI(base_url=self.base_url, **{"api_key": "test-key", "max_retries": 0,
                                                   **kwargs})
        self.clients.append(client)
        return client


def start_server(tmp_path: Path, env: dict[str, str], mode: str = "prod",
                 ready_timeout: float = 120.0, require_model: bool = True) -> Server:
    """Start run.py; return once /health says a model is ready (or, with
    require_model=False, once /health answers at all)."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port),
                "LOG_DIR": str(tmp_path / "logs"), "DATA_DIR": str(tmp_path / "data"),
                "MAX_CPU_THREADS": "1",
                "MODEL_BASE_PATH": str(tmp_path / "no-models"), **env}
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--mode", mode],
                               cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            status = requests.get(f"{server.url}/health", timeout=2).status_code
            if status == 200 or not require_model:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not healthy after {ready_timeout}s:\n{server.log()}")


# what Python and gevent print for an exception nothing caught: a greenlet that
# died this way did not do its work, though every answer may have looked right
UNCAUGHT = ("Traceback (most recent call last)", "> failed with ")


def stop_server(server: Server) -> None:
    """SIGTERM to Gunicorn's master alone, as the systemd unit stops it
    (KillMode=mixed): the service shuts down its own children in order.
    Whatever is left of its process group afterwards is killed. The SDK
    clients it handed out close their idle connections first: Gunicorn waits
    out a kept-alive connection (--keep-alive 5) before its worker exits."""
    for client in server.clients:
        client.close()
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait()
    uncaught = [line for line in server.log().splitlines() if any(u in line for u in UNCAUGHT)]
    assert not uncaught, f"uncaught exceptions in {server.log_path}: {uncaught}"


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory, model_dir, tiny_model) -> Iterator[Server]:
    """Gunicorn + gevent serving the tiny model by default, the other on demand."""
    tmp = tmp_path_factory.mktemp("tiny-server")
    server = start_server(tmp, {"DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(model_dir),
                                "MAX_CONCURRENT_MODELS": "2", "CONTEXT_SIZE": "512"})
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def tiny_app(tmp_path_factory, model_dir, tiny_model):
    """The service's own app in this process (tests/in_process.py), serving the
    tiny models like tiny_server, for protocol tests that need no process."""
    from tests.in_process import start_app

    app = start_app(tmp_path_factory.mktemp("tiny-app"), default_model="tiny-chat",
                    model_base_path=model_dir, max_concurrent_models=2, context_size=512)
    yield app
    app.stop()


@pytest.fixture(scope="session")
def smollm_server(tmp_path_factory) -> Iterator[Server]:
    """Gunicorn + gevent serving the real bundled models (SmolLM2 by default)."""
    tmp = tmp_path_factory.mktemp("smollm-server")
    server = start_server(tmp, {"DEFAULT_MODEL": SMOL,
                                "MAX_CONCURRENT_MODELS": "2"})
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def reference():
    """llama.cpp itself (llama-cpp-python's Llama) on SmolLM2's file, with
    every position's logits; flash attention on, as the engine's automatic
    choice makes it on a CPU (off, the logprobs differ by up to 0.3)."""
    from llama_cpp import Llama

    from src.core.model_catalog import _smollm2_path

    return Llama(str(_smollm2_path()), n_ctx=512, logits_all=True, flash_attn=True,
                 verbose=False, n_threads=2)


def reference_logprobs(llm, tokens: list[int]) -> list[float]:
    """log P(token i | tokens before it), for i >= 1."""
    llm.reset()
    llm.eval(tokens)
    scores = np.asarray(llm.scores[:len(tokens)], dtype=np.float64)
    out = []
    for i in range(1, len(tokens)):
        row = scores[i - 1]
        out.append(float(row[tokens[i]] - (row.max() + np.log(np.exp(row - row.max()).sum()))))
    return out


TOOLS_MODEL = "tiny-tools"  # the tiny chat model with room for a tool prompt (a byte a token)


@pytest.fixture(scope="session")
def tools_server(tiny_server) -> Server:
    """The tiny server with TOOLS_MODEL loaded: a 2048-token context of its own."""
    r = requests.post(f"{tiny_server.base_url}/models/load", timeout=60, json={
        "model_name": TOOLS_MODEL, "model_path": "tiny-chat.gguf", "context_size": 2048})
    assert r.status_code == 200, r.text
    return tiny_server


@pytest.fixture(scope="session")
def scripted_server(tmp_path_factory) -> Iterator[Server]:
    """Gunicorn + gevent serving the scripted models (tests/scripted_model.py):
    fixed replies that think, call tools and end, whatever the sampling."""
    folder = write_test_models(tmp_path_factory.mktemp("scripted-models"))
    tmp = tmp_path_factory.mktemp("scripted-server")
    server = start_server(tmp, {"DEFAULT_MODEL": "scripted-think", "MODEL_BASE_PATH": str(folder),
                                "MAX_CONCURRENT_MODELS": "8", "CONTEXT_SIZE": "1024",
                                "MAX_BATCH_SIZE": "2"})
    yield server
    stop_server(server)
