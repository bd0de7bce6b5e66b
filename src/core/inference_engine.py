"""The engine contract: one ABC every engine implements, and its value types.

The API layer and the model manager only ever see these types, never an
engine's own library.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .concurrency import CrossThreadQueue
from .exceptions import RequestTimeoutError, ServiceError, UnsupportedFeatureError


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    max_tokens: Optional[int] = None  # None: up to the end of the context; 0: score the prompt only
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # keep generating past end-of-sequence (benchmarks)
    logprobs: Optional[int] = None  # None: none; k: the chosen token's and k alternatives
    # None: none; k: each prompt token's logprob (given the tokens before it) and k alternatives
    prompt_logprobs: Optional[int] = None
    json_schema: Optional[dict[str, Any]] = None  # the output must be JSON valid against it
    grammar: Optional[str] = None  # an engine's own grammar (llama.cpp: GBNF)
    client: str = ""  # who asked (key fingerprint or address): queues are fair per client


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationDelta:
    """New text of one request. The last delta carries `finish_reason` and
    `usage`, or `error` when the engine could not finish the request."""

    text: str = ""
    token_count: int = 0
    finish_reason: Optional[str] = None  # "stop" | "length" | "tool_calls"
    stop_sequence: Optional[str] = None  # the request's stop string that ended it, if one did
    usage: Optional[Usage] = None
    # per token: {"token_id", "token", "bytes", "logprob", "rank", "top": [same, without "top"]}
    # (rank: 1 for the likeliest token of the vocabulary)
    logprobs: Optional[list[dict[str, Any]]] = None
    # on a request's first delta, when asked for: one entry per prompt token, as
    # above; the first token has nothing before it (logprob and rank None, no top)
    prompt_logprobs: Optional[list[dict[str, Any]]] = None
    error: Optional[ServiceError] = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class EngineOptions:
    """How an engine sizes itself; built from Settings by the model manager."""

    context_size: int = 4096  # per sequence; 0: the model's training context
    parallel_sequences: int = 4  # sequences decoded together in one step
    threads: int = 0  # 0: all physical cores
    batch_tokens: int = 512  # prompt and decode tokens per scheduler step
    max_waiting: int = 100  # requests queued for a free sequence; more get a 503
    gpu_memory_fraction: float = 0.8
    chat_template: Optional[str] = None  # used when the model has none
    chat_template_override: Optional[str] = None  # used instead of the model's own
    # vLLM only: weights' dtype and quantization, and how a model spreads over GPUs
    # and nodes (distributed_executor_backend "ray" for several nodes)
    dtype: str = "auto"
    quantization: Optional[str] = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None


@dataclass(frozen=True)
class EngineCapabilities:
    chat_template: bool = True
    embeddings: bool = False
    logprobs: bool = False
    prompt_logprobs: bool = False  # log-probabilities of the prompt's own tokens (scoring)
    grammar: bool = False
    tools: bool = False  # the chat template renders `tools` itself
    seed: bool = True
    logit_bias: bool = True


@dataclass
class EngineStatus:
    model_id: str
    engine: str
    path: str
    state: str  # "loading" | "ready" | "unloading" | "unloaded" | "failed"
    context_length: int = 0
    parallel_sequences: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    memory_bytes: int = 0
    tokens_generated: int = 0
    tokens_per_second: float = 0.0
    loaded_at: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


class RequestStream:
    """What `submit` returns: the deltas of one request, as they come.

    The engine thread calls `push`; the request's greenlet (or thread)
    iterates. Closing the stream early (a client that went away) aborts the
    request in the engine.
    """

    def __init__(self, request_id: str, abort: Callable[[str], None]):
        self.request_id = request_id
        self._abort = abort
        self._queue: CrossThreadQueue[GenerationDelta] = CrossThreadQueue()
        self.finished = False

    def push(self, delta: GenerationDelta) -> None:
        self._queue.put(delta)

    def poll(self, timeout: Optional[float]) -> list[GenerationDelta]:
        """Deltas available now, waiting at most `timeout` s; [] on time-out."""
        deltas = self._queue.take(timeout)
        if any(d.final for d in deltas):
            self.finished = True
            self._queue.close()
        return deltas

    def iter_deltas(self, deadline: Optional[float] = None,
                    idle_interval: Optional[float] = None) -> Iterator[Optional[GenerationDelta]]:
        """Yield deltas until the final one. Yields None every `idle_interval`
        seconds of silence (for keep-alives). Past `deadline` (a time.monotonic
        value) the request is aborted and RequestTimeoutError raised."""
        try:
            while not self.finished:
                timeout = idle_interval
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RequestTimeoutError("The request took longer than the server's "
                                                  "REQUEST_TIMEOUT and was stopped.")
                    timeout = left if timeout is None else min(timeout, left)
                deltas = self.poll(timeout)
                if not deltas:
                    if idle_interval is not None:
                        yield None
                    continue
                yield from deltas
        finally:
            self.close()

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._abort(self.request_id)
            self._queue.close()


class InferenceEngine(ABC):
    """A loaded (or loadable) model behind one engine library."""

    name: str = "base"

    def __init__(self, model_id: str, options: Optional[EngineOptions] = None):
        self.model_id = model_id
        self.options = options or EngineOptions()
        # how far `load` has come (0..1) and what it is doing: read by the model
        # manager for /v1/models/{id}/status and the console's progress bar
        self.load_progress: tuple[float, str] = (0.0, "starting")

    def report_progress(self, fraction: float, stage: str) -> None:
        """Called by an engine's `load` as it goes (from any thread)."""
        self.load_progress = (min(max(fraction, 0.0), 1.0), stage)

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        """A quick look at the weights before anything is unloaded to make room
        for them: raise ModelLoadError when they are plainly not loadable."""

    @abstractmethod
    def load(self, model_path: str) -> None:
        """Load the weights and start the scheduler; raise ModelLoadError."""

    @abstractmethod
    def unload(self) -> None:
        """Stop the scheduler, end every request, free the memory."""

    @abstractmethod
    def status(self) -> EngineStatus: ...

    @property
    @abstractmethod
    def capabilities(self) -> EngineCapabilities: ...

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens one request may use, prompt and output together."""

    # text ----------------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's configuration as vLLM's /tokenizer_info gives it
        (tokenizer_config.json's fields): at least tokenizer_class,
        bos_token, eos_token, pad_token, model_max_length and, when the model
        has one, chat_template."""

    @abstractmethod
    def render_chat(self, messages: list[dict[str, Any]],
                    tools: Optional[list[dict[str, Any]]] = None,
                    add_generation_prompt: bool = True,
                    template_kwargs: Optional[dict[str, Any]] = None) -> str:
        """The prompt text for a chat, from the model's own chat template;
        `template_kwargs` are further variables for the template (Qwen3's
        `enable_thinking`). Raise InvalidRequestError when the model has none."""

    # generation ------------------------------------------------------------
    @abstractmethod
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; raise ContextLengthExceededError or
        ServiceUnavailableError at once rather than failing later."""

    @abstractmethod
    def abort(self, request_id: str) -> None:
        """Stop a request and free its slot; unknown ids are ignored."""

    def embed(self, inputs: list[list[int]], timeout: float) -> list[list[float]]:
        """One L2-normalised embedding per input (token ids)."""
        raise UnsupportedFeatureError(f"The {self.name} engine does not serve embeddings "
                                      f"for model '{self.model_id}'.", param="model")
