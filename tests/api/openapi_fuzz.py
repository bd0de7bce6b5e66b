"""Schemathesis against a real server, every check on, a fixed seed, a
bounded number of cases (tests/api/test_openapi_fuzz.py runs it in the suite;
by hand it prints schemathesis's whole report):

    .venv/bin/python -m tests.api.openapi_fuzz            # read-only and generation routes
    .venv/bin/python -m tests.api.openapi_fuzz --state    # the routes that change state

Each run gets a server of its own with the tiny models and API keys (the
auth checks need them); tests/api/fuzz_hooks.py keeps generated bodies inside
what those models can do."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import ROOT, start_server, stop_server
from tests.api.fuzz_hooks import MAX_OUTPUT
from tests.tiny_model import write_tiny_model

SEED = 20261202
ADMIN_KEY = "fuzz-admin-key"
STATE_CHANGING = (r"^/v1/models/load$|/unload$|^/v1/models/\{model_id\}$|^/api/(pull|delete)$|"
                  r"^/(v1/)?responses/\{response_id\}$")


def schemathesis(url: str, *options: str) -> int:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
         "-H", f"Authorization: Bearer {ADMIN_KEY}", "--checks", "all", "--seed", str(SEED),
         "--workers", "1", "--no-shrink", "--request-timeout", "60",
         "--generation-deterministic",  # the same cases each run, no example database
         "--suppress-health-check", "all", "--output-truncate", "false", *options],
        env=env, cwd=ROOT).returncode


def main(state: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="openapi-fuzz-"))
    models = tmp / "models"
    models.mkdir()
    write_tiny_model(models / "tiny-chat.gguf")
    write_tiny_model(models / "tiny-base.gguf", chat_template=False, seed=99)
    server = start_server(tmp, {
        "DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(models),
        "MAX_CONCURRENT_MODELS": "2", "CONTEXT_SIZE": "2048", "MAX_CONCURRENT_REQUESTS": "1000",
        # a body that asks for no length gets 32 tokens, not the rest of the context: the
        # cases test the contract, and a few thousand of them must fit the suite's time
        "MAX_OUTPUT_TOKENS": str(MAX_OUTPUT),
        "API_KEYS": "fuzz-user-key", "ADMIN_API_KEY": ADMIN_KEY})
    try:
        if state:
            return schemathesis(server.url, "--max-examples", "8",
                                "--phases", "examples,coverage,fuzzing,stateful",
                                "--include-path-regex", STATE_CHANGING)
        return schemathesis(server.url, "--max-examples", "12",
                            "--phases", "examples,coverage,fuzzing",
                            "--exclude-path-regex", STATE_CHANGING)
    finally:
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main("--state" in sys.argv[1:]))
