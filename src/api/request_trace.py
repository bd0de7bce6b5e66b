"""What one inference request did: its model, time to first token, tokens and
final status. Counted in the metrics once, when the request ends, and read
by the access log for its line in api_requests.log."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from ..core.inference_engine import Usage
from ..utils.metrics import ServiceMetrics


@dataclass
class RequestTrace:
    metrics: ServiceMetrics
    model: str
    endpoint: str  # "chat" | "completions"
    stream: bool
    n: int = 1  # choices per prompt: they share their prompt's tokens
    started: float = field(default_factory=time.monotonic)
    ttft: Optional[float] = None
    usages: list[Usage] = field(default_factory=list)
    status: Optional[int] = None  # set once, when the request ends

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started

    def add_usage(self, usage: Optional[Usage]) -> None:
        if usage is not None:
            self.usages.append(usage)

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.usages[::self.n])

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usages)

    @property
    def cached_tokens(self) -> int:
        return sum(u.cached_tokens for u in self.usages[::self.n])

    def finish(self, status: int) -> None:
        if self.status is not None:
            return
        self.status = status
        self.metrics.observe_request(self.model, self.endpoint, status,
                                     time.monotonic() - self.started, self.ttft,
                                     self.prompt_tokens, self.completion_tokens,
                                     self.cached_tokens)
