"""MLX engine (Apple Silicon; MLX's CPU build runs it on Linux too), driven
through mlx-lm.

MLX arrays belong to the thread that made them, so one native thread per
model loads the weights and does all the MLX work: it takes requests one at
a time and streams each with `mlx_lm.stream_generate`, sampling with
`make_sampler` and `make_logits_processors`. Models load from a local folder
(config.json, safetensors, tokenizer files); never from a hub.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from loguru import logger

from ..core.concurrency import NativeWakeup, allocate_native_lock, start_native_thread
from ..core.exceptions import (EngineError, InvalidRequestError, ModelLoadError,
                               ServiceUnavailableError)
from ..core.fair_queue import FairQueue, queue_full
from ..core.inference_engine import (EngineStatus, GenerationDelta, GenerationRequest,
                                     InferenceEngine, RequestStream, Usage)
from ..core.text_stream import StopMatcher
from .chat_template import ChatTemplate
from .hf_text import HFText
from .logprobs import first_entry, log_softmax, logprob_entry

PROMPT_SCORE_CHUNK = 512  # prompt tokens per forward pass when a prompt is scored


class MLXEngine(HFText, InferenceEngine):
    name = "mlx"

    def __init__(self, model_id: str, options=None):
        super().__init__(model_id, options)
        self._state = "unloaded"
        self._path = ""
        self._tokenizer: Any = None
        self._template: Optional[ChatTemplate] = None
        self._context_length = 0
        self._vocab_size = 0
        self._guidance: Any = None  # llguidance's view of the tokenizer, made once
        # the KV cache of the last request and the tokens it holds: the next
        # request that starts with the same tokens skips them
        self._cache: Optional[list[Any]] = None
        self._cache_tokens: list[int] = []
        self._pending: FairQueue[tuple[GenerationRequest, RequestStream]] = \
            FairQueue(self.options.max_waiting)
        self._aborted: set[str] = set()
        self._running: Optional[str] = None
        self._wakeup = NativeWakeup()
        self._loaded = allocate_native_lock()
        self._exited = allocate_native_lock()
        self._load_error: Optional[str] = None
        self._stopping = False
        self._loaded_at: Optional[float] = None
        self._tokens_generated = 0
        self._recent_tps = 0.0

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        path = Path(model_path)
        if not path.is_dir() or not (path / "config.json").is_file() \
                or not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"{path.name} is not an MLX model folder (config.json and "
                                 f"*.safetensors); the MLX engine loads model folders.")

    def load(self, model_path: str) -> None:
        self.check_model(model_path)
        self._state, self._path = "loading", str(Path(model_path).resolve())
        self._loaded.acquire()
        self._exited.acquire()
        start_native_thread(self._run)
        self._loaded.acquire()  # the thread has loaded the weights, or failed
        self._loaded.release()
        if self._load_error is not None:
            self._state = "failed"
            raise ModelLoadError(f"MLX could not load {Path(model_path).name}: "
                                 f"{self._load_error}")
        self._loaded_at = time.time()
        self._state = "ready"
        logger.info("Loaded {} with MLX: {} tokens of context, chat template: {}",
                    self.model_id, self._context_length, "yes" if self._template else "no")

    def unload(self) -> None:
        if self._state in ("unloaded", "failed"):
            return
        self._state = "unloading"
        self._stopping = True
        self._wakeup.notify()
        self._exited.acquire()
        self._exited.release()
        self._tokenizer = None
        self._state = "unloaded"

    def status(self) -> EngineStatus:
        return EngineStatus(
            model_id=self.model_id, engine=self.name, path=self._path, state=self._state,
            context_length=self._context_length, parallel_sequences=1,
            requests_running=1 if self._running else 0, requests_waiting=len(self._pending),
            tokens_generated=self._tokens_generated, tokens_per_second=self._recent_tps,
            loaded_at=self._loaded_at)

    # generation ------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestStream:
        self._check_request(request)
        if request.json_schema is not None:
            self._schema_grammar(request.json_schema)
        stream = RequestStream(request.request_id, self.abort)
        if not self._pending.put(request.client, (request, stream)):
            raise queue_full(self.model_id, len(self._pending))
        self._wakeup.notify()
        return stream

    def abort(self, request_id: str) -> None:
        if self._pending.remove(lambda waiting: waiting[0].request_id == request_id):
            return  # it never started
        self._aborted.add(request_id)
        self._wakeup.notify()

    # the model's thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            import mlx.core as mx
            from mlx_lm import load  # imported here: MLX state is per thread

            if mx.default_device() == mx.cpu:
                # MLX's CPU backend compiles fused kernels by running g++ through popen();
                # the gevent worker reaps its children on SIGCHLD, so pclose() may find the
                # compiler gone and the generation fails ("pclose() failed", seen in the
                # suite). Uncompiled graphs give the same results; Metal is unaffected.
                mx.disable_compile()
            self.report_progress(0.05, "reading weights")
            model, tokenizer = load(self._path)
            self.report_progress(0.9, "preparing the tokenizer")
            self._tokenizer = tokenizer
            self._vocab_size = len(tokenizer.get_vocab())
            self._context_length = self._model_context(model)
            self._template = self._template_from(tokenizer, self.options)
        except Exception as exc:  # a bad folder must fail the load, not the worker
            self._load_error = str(exc)
            self._loaded.release()
            self._exited.release()
            return
        self._loaded.release()
        try:
            while not self._stopping:
                waiting = self._pending.get()
                if waiting is None:
                    self._wakeup.wait(0.5)
                    continue
                request, stream = waiting
                if stream.finished or request.request_id in self._aborted:
                    self._aborted.discard(request.request_id)
                    continue
                self._generate(model, tokenizer, request, stream)
        finally:
            error = ServiceUnavailableError(f"Model '{self.model_id}' was unloaded.")
            for _, stream in self._pending.drain():
                stream.push(GenerationDelta(error=error))
            del model
            import mlx.core as mx

            mx.clear_cache()
            self._exited.release()

    def _reuse_cache(self, model: Any, prompt: list[int]) -> int:
        """Trim the cache to the prefix it shares with `prompt`; how many tokens that is."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, \
            trim_prompt_cache

        shared = 0
        for a, b in zip(self._cache_tokens, prompt):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(prompt) - 1)  # the last prompt token starts the output
        if self._cache is not None and shared and can_trim_prompt_cache(self._cache):
            trim_prompt_cache(self._cache, len(self._cache_tokens) - shared)
            return shared
        self._cache, self._cache_tokens = make_prompt_cache(model), []
        return 0

    def _schema_processor(self, tokenizer: Any, schema: dict[str, Any]) -> Any:
        """A logits processor that lets through only the tokens that keep the
        output valid JSON for `schema` (llguidance's matcher; compact JSON)."""
        import mlx.core as mx
        import llguidance
        import llguidance.numpy as lnp

        matcher = llguidance.LLMatcher(self._guidance_tokenizer(tokenizer),
                                       self._schema_grammar(schema))
        vocab = self._guidance_tokenizer(tokenizer).vocab_size
        bitmask = lnp.allocate_token_bitmask(1, vocab)
        seen: list[int] = []  # how many tokens the processor was first called with

        def process(tokens: Any, logits: Any) -> Any:
            if not seen:
                seen.append(tokens.size)
            elif tokens.size > seen[0]:
                matcher.consume_token(int(tokens[-1].item()))
                seen[0] = tokens.size
            lnp.fill_next_token_bitmask(matcher, bitmask, 0)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab]
            mask = np.zeros(logits.shape[-1], dtype=bool)
            mask[:vocab] = allowed.astype(bool)
            return mx.where(mx.array(mask), logits, -float("inf"))

        return process

    @staticmethod
    def _ban_tokens(token_ids: Any) -> Any:
        """A logits processor that never lets `token_ids` be sampled
        (`ignore_eos`: the end tokens are banned, as llama.cpp's server does)."""
        import mlx.core as mx

        banned = mx.array(sorted(token_ids), dtype=mx.int32)

        def process(tokens: Any, logits: Any) -> Any:
            logits[..., banned] = -float("inf")
            return logits

        return process

    def _guidance_tokenizer(self, tokenizer: Any) -> Any:
        if self._guidance is None:
            import llguidance.hf

            self._guidance = llguidance.hf.from_tokenizer(tokenizer._tokenizer)
        return self._guidance

    @staticmethod
    def _schema_grammar(schema: dict[str, Any]) -> str:
        import llguidance

        try:
            return llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False})
        except Exception as exc:  # llguidance raises plain errors for what it lacks
            raise InvalidRequestError(f"This JSON schema cannot be enforced: {exc}",
                                      param="response_format") from None

    @staticmethod
    def _piece(tokenizer: Any) -> Callable[[int], bytes]:
        return lambda token: tokenizer.decode([token]).encode("utf-8")

    def _prompt_logprobs(self, model: Any, tokenizer: Any, prompt: list[int],
                         top: int) -> list[dict[str, Any]]:
        """Each prompt token's log-probability given the tokens before it: a
        pass of its own over the prompt (a fresh cache, in chunks), so the
        prompt cache and the generation that follows are untouched."""
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        piece = self._piece(tokenizer)
        entries = [first_entry(piece, prompt[0])]
        cache = make_prompt_cache(model)
        for start in range(0, len(prompt) - 1, PROMPT_SCORE_CHUNK):
            chunk = prompt[start:start + PROMPT_SCORE_CHUNK]
            logits = model(mx.array(chunk)[None], cache=cache)[0].astype(mx.float32)
            rows = np.array(logits)
            for i, row in enumerate(rows):
                target = start + i + 1
                if target < len(prompt):
                    entries.append(logprob_entry(piece, log_softmax(row), prompt[target], top))
        return entries

    def _model_context(self, model: Any) -> int:
        args = getattr(model, "args", None)
        trained = getattr(args, "max_position_embeddings", None) or 4096
        wanted = self.options.context_size or trained
        return min(wanted, trained)

    def _generate(self, model: Any, tokenizer: Any, request: GenerationRequest,
                  stream: RequestStream) -> None:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        s = request.sampling
        if s.seed is not None:
            mx.random.seed(s.seed)
        sampler = make_sampler(temp=0.0 if s.greedy else s.temperature,
                               top_p=s.top_p if s.top_p < 1.0 else 0.0, min_p=s.min_p,
                               top_k=s.top_k)
        processors = ([self._schema_processor(tokenizer, request.json_schema)]
                      if request.json_schema is not None else [])
        if request.ignore_eos:
            processors.append(self._ban_tokens(tokenizer.eos_token_ids))
        processors += make_logits_processors(
            logit_bias=s.logit_bias or None,
            repetition_penalty=s.repetition_penalty if s.repetition_penalty != 1.0 else None,
            presence_penalty=s.presence_penalty or None,
            frequency_penalty=s.frequency_penalty or None)
        stops = StopMatcher(request.stop)
        max_tokens = (self._context_length - len(request.prompt_tokens)
                      if request.max_tokens is None else request.max_tokens)
        prompt = request.prompt_tokens
        prompt_entries = (None if request.prompt_logprobs is None else
                          self._prompt_logprobs(model, tokenizer, prompt, request.prompt_logprobs))
        if max_tokens == 0:  # the prompt was only to be scored
            stream.push(GenerationDelta(finish_reason="length", usage=Usage(len(prompt), 0, 0),
                                        prompt_logprobs=prompt_entries))
            return
        reuse = self._reuse_cache(model, prompt)
        self._running = request.request_id
        generated, finish, started = 0, None, time.monotonic()
        produced: list[int] = []
        try:
            for out in stream_generate(model, tokenizer, prompt=prompt[reuse:],
                                       max_tokens=max_tokens, sampler=sampler,
                                       logits_processors=processors,
                                       prompt_cache=self._cache):
                produced.append(out.token)
                if request.request_id in self._aborted or self._stopping:
                    break
                generated += 1
                logprobs = (None if request.logprobs is None else [logprob_entry(
                    self._piece(tokenizer), np.array(out.logprobs, dtype=np.float32).reshape(-1),
                    out.token, request.logprobs)])
                text, stopped = stops.feed(out.text)
                if stopped:
                    finish = "stop"
                elif out.finish_reason:
                    finish, text = out.finish_reason, text + stops.flush()
                first, prompt_entries = prompt_entries, None  # handed out once
                if finish:
                    stream.push(GenerationDelta(
                        text=text, token_count=1, finish_reason=finish, logprobs=logprobs,
                        usage=Usage(len(prompt), generated, reuse), stop_sequence=stops.matched,
                        prompt_logprobs=first))
                    break
                stream.push(GenerationDelta(text=text, token_count=1, logprobs=logprobs,
                                            prompt_logprobs=first))
            else:  # the generator ended without saying why
                if request.request_id not in self._aborted:
                    stream.push(GenerationDelta(
                        text=stops.flush(), finish_reason="length" if generated >= max_tokens
                        else "stop", usage=Usage(len(prompt), generated, reuse),
                        prompt_logprobs=prompt_entries))
        except Exception as exc:  # an MLX failure ends this request, not the thread
            logger.exception("MLX generation failed for {}", self.model_id)
            stream.push(GenerationDelta(error=EngineError(f"MLX generation failed: {exc}")))
        finally:
            # the cache holds what was fed through the model: its offset says how much
            self._cache_tokens = (prompt + produced)[:self._cache[0].offset]
            self._aborted.discard(request.request_id)
            self._running = None
            self._tokens_generated += generated
            elapsed = time.monotonic() - started
            self._recent_tps = round(generated / elapsed, 2) if elapsed > 0 else 0.0
