"""Rate limits per client (an API key, or the peer's address without keys):
requests a minute (RATE_LIMIT_RPM) and tokens a minute (RATE_LIMIT_TPM),
each a token bucket that refills continuously. A generation reserves its
prompt tokens plus `max_tokens` when it starts and settles with what it
really used when it ends (a bucket may go into debt). Over a limit: 429
`rate_limit_exceeded` with Retry-After; every limited answer carries
OpenAI's `x-ratelimit-*` headers.

The buckets live in the worker process, like the models: with WORKERS=1
(the supported setup, docs/operations.md) the limits are exact; with N
workers each counts its own share of the traffic.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional

from flask import Flask, Response, current_app, g, request

from ...core.exceptions import RateLimitError
from ...utils.config import Settings
from .. import extensions as ext
from ..generation import Settle
from ..spec import is_public

MAX_IDLE_CLIENTS = 10_000  # past this many buckets, full (idle) ones are dropped


def no_reservation(tokens: int) -> Settle:
    return lambda used: None


class Bucket:
    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.updated = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be taken (0: now)."""
        return max(0.0, (amount - self.level) / self.rate)

    @property
    def full_in(self) -> float:
        return (self.capacity - self.level) / self.rate


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    seconds = math.ceil(seconds)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


class RateLimiter:
    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, table: dict[str, Bucket], client: str, per_minute: int) -> Bucket:
        bucket = table.get(client)
        if bucket is None:
            if len(table) >= MAX_IDLE_CLIENTS:
                for key, idle in list(table.items()):
                    idle.refill()
                    if idle.level >= idle.capacity:
                        del table[key]
            bucket = table[client] = Bucket(per_minute)
        bucket.refill()
        return bucket

    def admit_request(self, client: str) -> None:
        if not self.rpm:
            return
        with self._lock:
            bucket = self._bucket(self._requests, client, self.rpm)
            wait = bucket.wait_for(1)
            if wait == 0:
                bucket.level -= 1
                return
        raise _exceeded("requests", f"Rate limit reached for requests per minute (RPM): "
                        f"limit {self.rpm}. Please try again in {_duration(wait)}.", wait)

    def reserve_tokens(self, client: str, tokens: int) -> Settle:
        if not self.tpm:
            return no_reservation(tokens)
        if tokens > self.tpm:
            raise _exceeded("tokens", f"Request too large: {tokens} tokens (prompt and "
                            f"max_tokens) exceed the limit of {self.tpm} tokens per minute "
                            f"(TPM). Send a shorter prompt or a lower max_tokens.", 60.0)
        with self._lock:
            bucket = self._bucket(self._tokens, client, self.tpm)
            wait = bucket.wait_for(tokens)
            if wait == 0:
                bucket.level -= tokens
        if wait:
            raise _exceeded("tokens", f"Rate limit reached for tokens per minute (TPM): limit "
                            f"{self.tpm}, requested {tokens}. Please try again in "
                            f"{_duration(wait)}.", wait)
        settled = []

        def settle(used: int) -> None:
            if not settled:  # once, whatever path ends the request
                settled.append(used)
                with self._lock:
                    bucket.refill()
                    bucket.level = min(bucket.capacity, bucket.level + tokens - used)

        return settle

    def headers(self, client: str) -> dict[str, str]:
        out = {}
        with self._lock:
            for kind, table, limit in (("requests", self._requests, self.rpm),
                                       ("tokens", self._tokens, self.tpm)):
                if not limit:
                    continue
                bucket = self._bucket(table, client, limit)
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-reset-{kind}"] = _duration(bucket.full_in)
        return out


def _exceeded(kind: str, message: str, wait: float) -> RateLimitError:
    exc = RateLimitError(message, headers={"Retry-After": str(max(1, math.ceil(wait)))})
    exc.error_type = kind  # OpenAI answers type "requests" or "tokens"
    return exc


def _limited() -> bool:
    """Management routes, the public ones (/health, the console) and the
    Prometheus scrape are not rate limited."""
    view = current_app.view_functions.get(request.endpoint or "")
    return (request.method != "OPTIONS" and request.endpoint is not None
            and not getattr(view, "admin_only", False)
            and not is_public(view, request.endpoint) and request.path != "/metrics")


def token_reservation() -> Callable[[int], Settle]:
    """For the request in progress: reserve its tokens, get its settle function."""
    limiter = ext.rate_limiter()
    client = g.get("client", "")
    return lambda tokens: limiter.reserve_tokens(client, tokens)


def install(app: Flask, settings: Settings, count_tokens: bool = True) -> Optional[RateLimiter]:
    """`count_tokens=False`: requests only (the load-balanced entry point
    counts requests; the instances behind it, which see the tokens, count those)."""
    limiter = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm if count_tokens else 0)
    ext.rate_limiter.install(app, limiter)
    if not (limiter.rpm or limiter.tpm):
        return limiter

    @app.before_request
    def _count_request() -> None:
        if _limited():
            limiter.admit_request(g.client)

    @app.after_request
    def _headers(response: Response) -> Response:
        if _limited() and "client" in g:
            response.headers.update(limiter.headers(g.client))
        return response

    return limiter
