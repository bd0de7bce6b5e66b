"""The engine contract: one ABC every engine implements, and its value types.

The API layer and the model manager only ever see these types, never an
engine's own library.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from loguru import logger

from .batch_plan import BatchPlan, plan_batch
from .concurrency import CrossThreadQueue, allocate_native_lock, start_native_thread
from ..utils.names import ModelState  # noqa: F401 (part of the engine contract)
from .exceptions import (ContextLengthExceededError, EngineError, InvalidRequestError,
                         ModelLoadError, RequestTimeoutError, ServiceError,
                         ServiceUnavailableError, UnsupportedFeatureError)


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

    # per sequence, and sequences decoded together in one step; None: chosen at
    # load time from the model and the memory (batch_plan.py); context 0: the
    # model's training context
    context_size: Optional[int] = None
    parallel_sequences: Optional[int] = None
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
    """What the API checks before it starts a request, to answer 400 instead of failing late."""

    embeddings: bool = False
    logprobs: bool = False
    prompt_logprobs: bool = False  # log-probabilities of the prompt's own tokens (scoring)
    grammar: bool = False  # output held to a JSON schema (GenerationRequest.json_schema)
    tools: bool = False  # the chat template renders `tools` itself


@dataclass
class EngineStatus:
    model_id: str
    engine: str
    path: str
    state: ModelState
    context_length: int = 0
    parallel_sequences: int = 0
    batch_plan: str = ""  # how the two were chosen ("auto: ..." or "set: ...")
    requests_running: int = 0
    requests_waiting: int = 0
    memory_bytes: int = 0
    tokens_generated: int = 0
    tokens_batched: int = 0  # generated in steps shared with other requests
    tokens_per_second: float = 0.0
    loaded_at: Optional[float] = None


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
    """A loaded (or loadable) model behind one engine library.

    The base class owns what every engine does the same way: the lifecycle
    (its states are the model manager's), the handshake with the engine's
    worker thread, the checks a request passes before it is queued, and the
    token counters. An engine supplies `_open` (load the weights, in the
    worker thread), `_serve` (run until `_stopping`), `_queue` and the rest.
    """

    name: str = "base"
    library: str = "the engine"  # in messages: "llama.cpp could not load ..."

    def __init__(self, model_id: str, options: Optional[EngineOptions] = None):
        self.model_id = model_id
        self.options = options or EngineOptions()
        # how far `load` has come (0..1) and what it is doing: read by the model
        # manager for /v1/models/{id}/status and the console's progress bar
        self.load_progress: tuple[float, str] = (0.0, "starting")
        self.state = ModelState.UNLOADED
        self.path = ""
        self.loaded_at: Optional[float] = None
        # sequences decoded at once and how they were chosen: set by `_open`
        self.parallel_sequences = self.options.parallel_sequences or 0
        self.batch_plan = ""
        self.tokens_generated = 0
        self.tokens_batched = 0  # of those, made in a step shared with other requests
        # set by `_open`: requests are checked against them
        self._context_length = 0
        self._vocab_size = 0
        self._stopping = False
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tokens) per step
        self._loaded = allocate_native_lock()
        self._exited = allocate_native_lock()
        self._load_error: Optional[str] = None

    def _plan_batch(self, trained_context: int, kv_bytes_per_token: int,
                    memory_free: int) -> BatchPlan:
        """Sequences and context from the options, or chosen for this model
        and this memory where they are automatic; kept for the status."""
        plan = plan_batch(self.options.parallel_sequences, self.options.context_size,
                          trained_context, kv_bytes_per_token, memory_free)
        self.parallel_sequences, self.batch_plan = plan.sequences, plan.how
        return plan

    def report_progress(self, fraction: float, stage: str) -> None:
        """Called by an engine's `_open` as it goes (from any thread)."""
        self.load_progress = (min(max(fraction, 0.0), 1.0), stage)

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        """A quick look at the weights before anything is unloaded to make room
        for them: raise ModelLoadError when they are plainly not loadable."""

    def load(self, model_path: str) -> None:
        """Load the weights in the engine's worker thread and start serving;
        raise ModelLoadError."""
        self.check_model(model_path)
        self.state, self.path = ModelState.LOADING, str(Path(model_path).resolve())
        self._stopping, self._load_error = False, None
        self._loaded.acquire()
        self._exited.acquire()
        start_native_thread(self._work)
        self._loaded.acquire()  # the worker has loaded the weights, or failed
        self._loaded.release()
        if self._load_error is not None:
            self.state = ModelState.ERROR
            raise ModelLoadError(self._load_error)
        self.loaded_at = time.time()
        self.state = ModelState.READY
        self.report_progress(1.0, "ready")
        logger.info("Loaded {} with {}: {}; {}", self.model_id, self.library, self.batch_plan,
                    self._load_summary())

    def unload(self) -> None:
        """Stop the worker, end every request, free the memory."""
        if self.loaded_at is None or self.state in (ModelState.UNLOADING, ModelState.UNLOADED):
            return  # never loaded, or already going
        self.state = ModelState.UNLOADING
        self._stopping = True
        self._wake()
        self._exited.acquire()  # the worker has ended every request and stopped
        self._exited.release()
        self._close()
        self.loaded_at = None
        self.state = ModelState.UNLOADED

    def _work(self) -> None:
        """The worker thread: load, tell `load`, serve until unloaded."""
        try:
            self._open()
        except Exception as exc:  # a bad file or no memory fails the load, not the worker
            self._load_error = (exc.message if isinstance(exc, ModelLoadError) else
                                f"{self.library} could not load {Path(self.path).name}: {exc}")
            self._loaded.release()
            self._exited.release()
            return
        self._loaded.release()
        try:
            self._serve()
        except Exception as exc:  # a bug must end requests, not hang them
            logger.exception("The worker of {} failed", self.model_id)
            self.state = ModelState.ERROR
            self._fail_all(EngineError(f"The engine failed: {exc}"))
        finally:
            self._fail_all(ServiceUnavailableError(f"Model '{self.model_id}' was unloaded."))
            self._exited.release()

    @abstractmethod
    def _open(self) -> None:
        """Load the weights (in the worker thread); set _context_length and
        _vocab_size. Raise to fail the load."""

    @abstractmethod
    def _serve(self) -> None:
        """Serve requests until `_stopping` is set (in the worker thread)."""

    def _wake(self) -> None:
        """Make the worker look at `_stopping` (and at new work) now."""

    def _close(self) -> None:
        """Free what outlives the worker thread, after it stopped."""

    @abstractmethod
    def _fail_all(self, error: ServiceError) -> None:
        """End every running and waiting request with `error` (worker thread)."""

    # status ----------------------------------------------------------------
    def status(self) -> EngineStatus:
        running, waiting = self._queue_lengths()
        return EngineStatus(
            model_id=self.model_id, engine=self.name, path=self.path, state=self.state,
            context_length=self._context_length, parallel_sequences=self.parallel_sequences,
            batch_plan=self.batch_plan,
            requests_running=running, requests_waiting=waiting,
            memory_bytes=self._memory_bytes(), tokens_generated=self.tokens_generated,
            tokens_batched=self.tokens_batched,
            tokens_per_second=self.tokens_per_second, loaded_at=self.loaded_at)

    @abstractmethod
    def _queue_lengths(self) -> tuple[int, int]:
        """(requests running, requests waiting for a sequence)."""

    def _memory_bytes(self) -> int:
        return 0

    def _load_summary(self) -> str:
        """What the load log line adds (threads, chat template, ...)."""
        return ""

    def _count_tokens(self, produced: int, sequences: Optional[int] = None) -> None:
        """`produced` tokens came out of one step (any thread) that decoded
        `sequences` requests (by default: the requests running now)."""
        self.tokens_generated += produced
        if (sequences if sequences is not None else self._queue_lengths()[0]) > 1:
            self.tokens_batched += produced
        self._recent.append((time.monotonic(), produced))

    @property
    def tokens_per_second(self) -> float:
        """Over the last steps: what /metrics and the console show."""
        recent = list(self._recent)
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return round(sum(n for _, n in recent[1:]) / span, 2) if span > 0 else 0.0

    @property
    @abstractmethod
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def context_length(self) -> int:
        """Tokens one request may use, prompt and output together."""
        return self._context_length

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
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Check and queue a request; raise ContextLengthExceededError,
        InvalidRequestError or ServiceUnavailableError at once rather than
        failing later."""
        self.check_request(request)
        return self._queue(request)

    @abstractmethod
    def _queue(self, request: GenerationRequest) -> RequestStream:
        """Queue a checked request (an engine may still refuse it: a grammar
        it cannot enforce, a full queue)."""

    @abstractmethod
    def abort(self, request_id: str) -> None:
        """Stop a request and free its slot; unknown ids are ignored."""

    def check_request(self, request: GenerationRequest) -> None:
        """A request refused at once (503, 400) rather than failed later."""
        self._check_ready()
        if not request.prompt_tokens:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        self.check_token_ids(request.prompt_tokens, "prompt")
        wanted = len(request.prompt_tokens) + (1 if request.max_tokens is None
                                               else request.max_tokens)
        if wanted > self._context_length:
            raise ContextLengthExceededError(self._context_length, wanted)
        for token in request.sampling.logit_bias:
            if not 0 <= token < self._vocab_size:
                raise InvalidRequestError(f"logit_bias names token {token}, outside this "
                                          f"model's vocabulary (0..{self._vocab_size - 1}).",
                                          param="logit_bias")

    def check_embedding_inputs(self, inputs: list[list[int]]) -> None:
        self._check_ready()
        for tokens in inputs:
            if not tokens:
                raise InvalidRequestError("An input is empty.", param="input")
            self.check_token_ids(tokens, "input")
            if len(tokens) > self._context_length:
                raise ContextLengthExceededError(self._context_length, len(tokens),
                                                 param="input")

    def check_token_ids(self, tokens: list[int], param: str) -> None:
        """A 400 for a token id outside the vocabulary (engines read out of bounds on one)."""
        bad = next((t for t in tokens if not 0 <= t < self._vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"Token id {bad} is outside this model's vocabulary "
                                      f"(0..{self._vocab_size - 1}).", param=param)

    def _check_ready(self) -> None:
        if self.state != ModelState.READY:
            raise ServiceUnavailableError(f"Model '{self.model_id}' is {self.state}.")

    def embed(self, inputs: list[list[int]], timeout: float) -> list[list[float]]:
        """One L2-normalised embedding per input (token ids)."""
        raise UnsupportedFeatureError(f"The {self.name} engine does not serve embeddings "
                                      f"for model '{self.model_id}'.", param="model")
