"""What many tests need, written once: waiting for a condition, the tiny
chat request, a POST sent on a socket of its own, and the samples of a
Prometheus /metrics page."""
from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import urlparse

import requests

T = TypeVar("T")

# the smallest chat a tiny model answers
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.05) -> T:
    """`check()`'s first true value, looked at every `interval` seconds; the
    test fails saying `what` when `timeout` seconds pass first. A check that
    raises counts as false until the last try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:.0f} s")
        time.sleep(interval)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw_post(base_url: str, path: str, body: dict,
             headers: Optional[dict[str, str]] = None) -> socket.socket:
    """A POST sent on a socket of its own and not waited for: the test reads
    the answer, or hangs up, when it wants."""
    url = urlparse(base_url)
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(payload)}\r\n{head}\r\n"
                 .encode() + payload)
    return sock


def metric_samples(url: str, **headers: Any) -> list[Any]:
    """Every sample of the Prometheus page at `url` (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10, headers=headers or None).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric_sum(url: str, model: str, *names: str) -> float:
    """The sum of the named samples labelled with `model`."""
    return sum(s.value for s in metric_samples(url)
               if s.name in names and s.labels.get("model") == model)
