"""Start this service with run.py for a benchmark, and wait until it is ready."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(env: dict[str, str], output: Path,
           ready: Callable[[str], bool]) -> tuple[subprocess.Popen, str]:
    """`run.py --mode prod` on a free loopback port with `env` on top of this
    environment; returns once `ready(url)` holds (it may raise requests' errors)."""
    port = free_port()
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **env}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--mode", "prod"], cwd=ROOT,
                            env=full_env, stdout=open(output, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if ready(url):
                return proc, url
        except (requests.RequestException, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"the server did not start; see {output}")
