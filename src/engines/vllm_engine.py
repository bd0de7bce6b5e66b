"""vLLM engine (NVIDIA CUDA; vLLM's CPU build runs it elsewhere), driven
through vLLM's own scheduler: continuous batching, paged attention, prefix
caching, guided decoding.

vLLM's `AsyncLLM` lives on an asyncio loop in the model's native thread; its
EngineCore runs in a separate process started with `spawn`, a fresh
interpreter that gevent's monkey-patching never reaches. vLLM is imported in
the hub's thread (its import runs subprocesses, which gevent allows only
there). Requests, aborts and outputs cross between the loop and the
greenlets through `run_coroutine_threadsafe` and the contract's `RequestStream`.
"""
from __future__ import annotations

import asyncio
import json
import os
import selectors
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from loguru import logger
# imported with the module, in the hub's thread: vLLM's import runs subprocesses,
# and gevent's subprocess works only there
from vllm import SamplingParams
from vllm.config.structured_outputs import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.model_executor.models.registry import ModelRegistry
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM

from ..core.batch_plan import AUTO_CONTEXT
from ..core.concurrency import HubRunner, allocate_native_lock
from ..core.exceptions import (EngineError, InvalidRequestError, ModelLoadError,
                               ServiceUnavailableError)
from ..core.fair_queue import admits, queue_full
from ..core.inference_engine import (GenerationDelta, GenerationRequest,
                                     InferenceEngine, RequestStream, Usage)
from ..core.model_metadata import read_metadata
from ..utils.names import Engine
from .chat_template import ChatTemplate
from .hf_text import HFText

_in_hub = HubRunner()  # made at import, in the hub's thread


def _inspect_architectures(architectures: list[str]) -> None:
    """The first time vLLM meets a model class it inspects it in a subprocess
    (to keep CUDA out of this process) and keeps the answer, in memory and
    under VLLM_CACHE_ROOT. gevent runs subprocesses only in the hub's thread,
    so it happens there, before the model's thread asks."""
    inspect = getattr(ModelRegistry, "_try_inspect_model_cls", None)  # not a public API
    if inspect is None:
        return
    for arch in set(architectures) & ModelRegistry.get_supported_archs():
        inspect(arch)


class VLLMEngine(HFText, InferenceEngine):
    name = Engine.VLLM
    library = "vLLM"

    def __init__(self, model_id: str, options=None):
        super().__init__(model_id, options)
        self._llm: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._tokenizer: Any = None
        self._template: Optional[ChatTemplate] = None
        self._running: dict[str, RequestStream] = {}
        self._waiting = 0
        self._in_flight: Counter[str] = Counter()  # per client: fairness between clients
        self._in_flight_lock = allocate_native_lock()  # the hub adds, vLLM's loop removes
        self._stop: Optional[asyncio.Event] = None

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        path = Path(model_path)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{path.name} is not a Hugging Face model folder (config.json "
                                 f"and weights); the vLLM engine loads model folders.")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path.name}/config.json cannot be read: {exc}") from None
        architectures = config.get("architectures") if isinstance(config, dict) else None
        _in_hub(lambda: _inspect_architectures(architectures or []))

    def _wake(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    def _queue_lengths(self) -> tuple[int, int]:
        return len(self._running) - self._waiting, self._waiting

    # generation ------------------------------------------------------------
    def _queue(self, request: GenerationRequest) -> RequestStream:
        if self._loop is None:
            raise ServiceUnavailableError(f"Model '{self.model_id}' is {self.state}.")
        mine = self._in_flight[request.client]
        if not admits(self._waiting, self.options.max_waiting, mine,
                      len(self._in_flight) + (0 if mine else 1)):
            raise queue_full(self.model_id, self._waiting)
        stream = RequestStream(request.request_id, self.abort)
        params = self._sampling_params(request)  # a bad parameter is a 400 here, not later
        self._running[request.request_id] = stream
        with self._in_flight_lock:
            self._in_flight[request.client] += 1
        # vLLM's priority policy serves lower numbers first: a client's n-th request
        # in flight waits behind every other client's earlier ones (round-robin)
        asyncio.run_coroutine_threadsafe(self._generate(request, params, stream, mine),
                                         self._loop)
        return stream

    def abort(self, request_id: str) -> None:
        if self._loop is not None and self._llm is not None and request_id in self._running:
            asyncio.run_coroutine_threadsafe(self._llm.abort(request_id), self._loop)

    def _sampling_params(self, request: GenerationRequest) -> Any:
        s = request.sampling
        try:
            return SamplingParams(
                n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1,
                min_p=s.min_p, seed=s.seed, presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty, repetition_penalty=s.repetition_penalty,
                logit_bias=dict(s.logit_bias) or None, stop=list(request.stop) or None,
                ignore_eos=request.ignore_eos,
                # vLLM generates at least one token: a prompt only to be scored drops it
                max_tokens=max(request.max_tokens, 1) if request.max_tokens is not None
                else self._context_length - len(request.prompt_tokens),
                logprobs=request.logprobs, prompt_logprobs=request.prompt_logprobs,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=StructuredOutputsParams(json=request.json_schema)
                if request.json_schema is not None else None)
        except ValueError as exc:
            raise InvalidRequestError(f"vLLM refused the sampling parameters: {exc}") from None

    # the model's thread ------------------------------------------------------
    def _open(self) -> None:
        # the EngineCore process must start from a fresh interpreter, not a fork of this one
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # Under gevent this is gevent's selector: while the loop waits for I/O this
        # thread's own hub runs, and with it the greenlets that vLLM's thread
        # pools (threading is patched) are made of; a plain epoll would starve them.
        loop = asyncio.SelectorEventLoop(selectors.DefaultSelector())
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_llm())
        except BaseException:
            loop.close()
            raise
        self._loop = loop

    async def _start_llm(self) -> None:
        opts = self.options
        args = AsyncEngineArgs(
            model=self.path, tokenizer=self.path,
            max_model_len=self._wanted_context(), max_num_seqs=opts.parallel_sequences,
            gpu_memory_utilization=opts.gpu_memory_fraction, enable_prefix_caching=True,
            dtype=opts.dtype, quantization=opts.quantization,
            tensor_parallel_size=opts.tensor_parallel_size,
            pipeline_parallel_size=opts.pipeline_parallel_size,
            distributed_executor_backend=opts.distributed_executor_backend,
            disable_log_stats=True, scheduling_policy="priority",
            # compact JSON under a schema, as the llama.cpp engine's grammar makes:
            # a model cannot spend its tokens on whitespace
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar",
                                                              disable_any_whitespace=True))
        # one call does it all: weights, KV cache profiling, CUDA graphs
        self.report_progress(0.05, "starting vLLM (weights, KV cache, CUDA graphs)")
        try:
            self._llm = AsyncLLM.from_engine_args(args)
            self.report_progress(0.95, "preparing the tokenizer")
            self._tokenizer = self._llm.get_tokenizer()
            self._vocab_size = len(self._tokenizer.get_vocab())
            self._context_length = self._llm.model_config.max_model_len
            self._report_batch(self._llm.vllm_config)
            self._template = self._template_from(self._tokenizer, opts)
        except Exception:
            logger.exception("vLLM could not load {}", self.model_id)
            if self._llm is not None:
                self._llm.shutdown()
                self._llm = None
            raise
        self._stop = asyncio.Event()

    def _wanted_context(self) -> Optional[int]:
        """max_model_len: the operator's, or where automatic the plan's
        length capped by the model's own (None where unknown: vLLM's choice)."""
        if self.options.context_size is not None:
            return self.options.context_size or None
        trained = (read_metadata(Path(self.path)) or {}).get("context_length")
        return min(trained, AUTO_CONTEXT) if trained else None

    def _report_batch(self, config: Any) -> None:
        """vLLM sizes its own batch from the KV cache it profiled: say what it chose."""
        n = config.scheduler_config.max_num_seqs
        # known here when the engine core runs in this process
        blocks = config.cache_config.num_gpu_blocks
        self.parallel_sequences = n
        sizes = f"{n} sequences x {self._context_length} tokens"
        self.batch_plan = (f"set: {sizes}" if self.options.parallel_sequences else
                           f"auto: {sizes} (vLLM's choice from its KV cache)") + \
            (f", KV cache for {blocks * config.cache_config.block_size} tokens" if blocks else "")

    def _serve(self) -> None:
        loop = self._loop
        try:
            loop.run_until_complete(self._serve_until_stopped())
        finally:
            loop.close()
            self._loop = None

    async def _serve_until_stopped(self) -> None:
        await self._stop.wait()
        error = ServiceUnavailableError(f"Model '{self.model_id}' was unloaded.")
        for request_id, stream in list(self._running.items()):
            await self._llm.abort(request_id)
            stream.push(GenerationDelta(error=error))
        self._running.clear()
        # vLLM cancels its output task only after stopping the engine process; by
        # then the task has seen the process die and logged an EngineDeadError
        handler = getattr(self._llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        self._llm.shutdown()
        self._llm = None

    def _fail_all(self, error) -> None:
        """The loop has ended every request; one that was submitted as it stopped is ended here."""
        for stream in list(self._running.values()):
            stream.push(GenerationDelta(error=error))
        self._running.clear()

    async def _generate(self, request: GenerationRequest, params: Any,
                        stream: RequestStream, priority: int) -> None:
        rid = request.request_id
        generated = cached = 0
        self._waiting += 1
        started = False
        score_only = request.max_tokens == 0
        try:
            async for out in self._llm.generate({"prompt_token_ids": request.prompt_tokens},
                                                params, request_id=rid, priority=priority):
                if not started:
                    started, self._waiting = True, self._waiting - 1
                choice = out.outputs[0]
                cached = max(cached, out.num_cached_tokens or 0)  # not on every delta
                delta = GenerationDelta(prompt_logprobs=self._prompt_logprobs(
                    request.prompt_tokens, out.prompt_logprobs, request.prompt_logprobs))
                if not score_only:
                    generated += len(choice.token_ids)
                    self._count_tokens(len(choice.token_ids))
                    delta.text, delta.token_count = choice.text, len(choice.token_ids)
                    delta.logprobs = self._logprobs(choice, request.logprobs)
                if out.finished:
                    delta.finish_reason = ("length" if score_only or choice.finish_reason == "length"
                                           else "stop")
                    # vLLM's stop_reason: the stop string that matched (a token id for stop tokens)
                    if isinstance(choice.stop_reason, str) and not score_only:
                        delta.stop_sequence = choice.stop_reason
                    delta.usage = Usage(len(request.prompt_tokens), generated, cached)
                stream.push(delta)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed request must not stop the loop
            logger.exception("vLLM generation failed for {}", self.model_id)
            stream.push(GenerationDelta(error=EngineError(f"vLLM generation failed: {exc}")))
        finally:
            if not started:
                self._waiting -= 1
            self._running.pop(rid, None)
            with self._in_flight_lock:
                self._in_flight[request.client] -= 1
                if not self._in_flight[request.client]:
                    del self._in_flight[request.client]

    def _entry(self, token: int, lp: Any) -> dict[str, Any]:
        text = lp.decoded_token or self._tokenizer.decode([token])
        return {"token_id": token, "token": text, "bytes": list(text.encode()),
                "logprob": float(lp.logprob), "rank": lp.rank}

    def _ranked(self, token: int, alternatives: dict[int, Any], top: int) -> dict[str, Any]:
        """vLLM's logprobs at one position (the token's own and the top
        ranks) as an entry of GenerationDelta.logprobs."""
        ranked = sorted(alternatives.items(), key=lambda kv: kv[1].rank or 0)
        return {**self._entry(token, alternatives[token]),
                "top": [self._entry(t, lp) for t, lp in ranked
                        if lp.rank is not None and lp.rank <= top][:top]}

    def _logprobs(self, choice: Any, top: Optional[int]) -> Optional[list[dict[str, Any]]]:
        if top is None or not choice.logprobs:
            return None
        return [self._ranked(token, alternatives, top)
                for token, alternatives in zip(choice.token_ids, choice.logprobs)]

    def _prompt_logprobs(self, prompt: list[int], positions: Optional[list[Any]],
                         top: Optional[int]) -> Optional[list[dict[str, Any]]]:
        """vLLM gives them once, on the first output; the first position is None."""
        if top is None or not positions:
            return None
        first = self._tokenizer.decode([prompt[0]])
        entries = [{"token_id": prompt[0], "token": first, "bytes": list(first.encode()),
                    "logprob": None, "rank": None, "top": []}]
        return entries + [self._ranked(token, alternatives, top)
                          for token, alternatives in zip(prompt[1:], positions[1:])]
