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
from typing import Optional

from tests.api.fuzz_hooks import MAX_OUTPUT
from tests.conftest import ROOT, Server, start_server, stop_server
from tests.tiny_model import write_tiny_model

SEED = 20261202
ADMIN_KEY = "fuzz-admin-key"
STATE_CHANGING = (r"^/v1/models/load$|/unload$|^/v1/models/\{model_id\}$|^/api/(pull|delete)$|"
                  r"^/(v1/)?responses/\{response_id\}$")


# the read-only and generation routes in two halves, fuzzed at once against two servers
# (each server decodes on one core): the generating routes of the OpenAI face, and the rest
GENERATING = r"(v1/)?(chat/completions|completions|responses|embeddings)$|generate$"
HALVES = (f"^/({GENERATING})", f"^/(?!{GENERATING})")  # the generating routes, and the rest


def schemathesis(url: str, *options: str, log: Optional[Path] = None) -> subprocess.Popen:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    out = open(log, "w") if log else None
    return subprocess.Popen(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
         "-H", f"Authorization: Bearer {ADMIN_KEY}", "--checks", "all", "--seed", str(SEED),
         "--workers", "1", "--no-shrink", "--request-timeout", "60",
         "--generation-deterministic",  # the same cases each run, no example database
         "--suppress-health-check", "all", "--output-truncate", "false", *options],
        env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)


def fuzz_server(tmp: Path) -> Server:
    models = tmp / "models"
    models.mkdir(parents=True)
    write_tiny_model(models / "tiny-chat.gguf")
    write_tiny_model(models / "tiny-base.gguf", chat_template=False, seed=99)
    return start_server(tmp, {
        "DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(models),
        "MAX_CONCURRENT_MODELS": "2", "CONTEXT_SIZE": "2048", "MAX_CONCURRENT_REQUESTS": "1000",
        # a body that asks for no length gets 32 tokens, not the rest of the context: the
        # cases test the contract, and a few thousand of them must fit the suite's time
        "MAX_OUTPUT_TOKENS": str(MAX_OUTPUT),
        "API_KEYS": "fuzz-user-key", "ADMIN_API_KEY": ADMIN_KEY})


def main(state: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="openapi-fuzz-"))
    if state:
        server = fuzz_server(tmp / "state")
        try:
            return schemathesis(server.url, "--max-examples", "8",
                                "--phases", "examples,coverage,fuzzing,stateful",
                                "--include-path-regex", STATE_CHANGING).wait()
        finally:
            stop_server(server)
    servers = [fuzz_server(tmp / f"half-{i}") for i in range(len(HALVES))]
    try:
        runs = [schemathesis(server.url, "--max-examples", "12",
                             "--phases", "examples,coverage,fuzzing",
                             "--include-path-regex", half, "--exclude-path-regex", STATE_CHANGING,
                             log=tmp / f"half-{i}.log")
                for i, (server, half) in enumerate(zip(servers, HALVES))]
        codes = [run.wait() for run in runs]
        for i in range(len(HALVES)):  # the reports, one after the other
            print((tmp / f"half-{i}.log").read_text())
        return max(codes)
    finally:
        for server in servers:
            stop_server(server)


if __name__ == "__main__":
    sys.exit(main("--state" in sys.argv[1:]))
