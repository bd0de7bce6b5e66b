"""MLX engine (Apple Silicon; MLX's CPU build runs it on Linux too), driven
through mlx-lm.

MLX arrays belong to the thread that made them, so one native thread per
model loads the weights and does all the MLX work. It batches continuously
with mlx-lm's `BatchGenerator`: every running request is one row of each
decode step, new prompts are prefilled in chunks between steps, and each row
has its own sampler and logits processors. The engine itself decides when a
request ends (end token, stop string, max_tokens, abort) and takes it out of
the batch at once. Finished requests leave their KV cache in an LRU keyed by
tokens, so the next request that starts the same way skips that prefix.

A model whose caches cannot be batched (mlx-lm has no `merge` for them) is
served one request at a time with `generate_step`, through the same code.
Models load from a local folder (config.json, safetensors, tokenizer files);
never from a hub.
"""
from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import psutil
from loguru import logger

from ..core.batch_plan import kv_bytes_per_token
from ..core.concurrency import NativeWakeup
from ..core.exceptions import EngineError, InvalidRequestError, ModelLoadError
from ..core.fair_queue import FairQueue, queue_full
from ..core.inference_engine import (GenerationDelta, GenerationRequest, InferenceEngine,
                                     RequestStream, SamplingParams, Usage)
from ..core.text_stream import StopMatcher
from ..utils.names import Engine
from .chat_template import ChatTemplate
from .hf_text import HFText
from .logprobs import first_entry, log_softmax, logprob_entry

PROMPT_SCORE_CHUNK = 512  # prompt tokens per forward pass when a prompt is scored
PROMPT_CACHES = 10  # finished requests' KV caches kept for reuse, least recently used out
_CACHE_KEY = "model"  # the LRU serves one model


@dataclass(eq=False)
class _Sequence:
    """One running request: a row of the batch (or the one running request)."""

    uid: int
    request: GenerationRequest
    stream: RequestStream
    max_tokens: int
    detokenizer: Any  # mlx-lm's streaming detokenizer, one per request
    stops: StopMatcher
    cached: int  # prompt tokens whose KV came from the prompt cache
    prompt_entries: Optional[list[dict[str, Any]]] = None  # handed out with the first delta
    steps: Optional[Iterator[tuple[int, Any]]] = None  # one at a time: generate_step's tokens
    generated: int = 0

    def take_prompt_entries(self) -> Optional[list[dict[str, Any]]]:
        entries, self.prompt_entries = self.prompt_entries, None
        return entries


class MLXEngine(HFText, InferenceEngine):
    name = Engine.MLX
    library = "MLX"

    def __init__(self, model_id: str, options=None):
        super().__init__(model_id, options)
        self._model: Any = None
        self._tokenizer: Any = None
        self._template: Optional[ChatTemplate] = None
        self._eos: frozenset[int] = frozenset()
        self._guidance: Any = None  # llguidance's view of the tokenizer, made once
        self._batchable = True
        self._generator: Any = None  # the BatchGenerator, made in the worker thread
        self._prompt_caches: Any = None  # mlx-lm's LRUPromptCache
        self._stream: Any = None  # the worker thread's MLX stream
        self._pending: FairQueue[tuple[GenerationRequest, RequestStream]] = \
            FairQueue(self.options.max_waiting)
        self._aborts: deque[str] = deque()
        self._active: dict[int, _Sequence] = {}
        self._uids = itertools.count()  # one at a time: the generator gives none
        self._wakeup = NativeWakeup()

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        path = Path(model_path)
        if not path.is_dir() or not (path / "config.json").is_file() \
                or not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"{path.name} is not an MLX model folder (config.json and "
                                 f"*.safetensors); the MLX engine loads model folders.")

    def _open(self) -> None:
        import mlx.core as mx
        from mlx_lm import load  # imported here: MLX state is per thread
        from mlx_lm.models.cache import make_prompt_cache

        if mx.default_device() == mx.cpu:
            # MLX's CPU backend compiles fused kernels by running g++ through popen();
            # the gevent worker reaps its children on SIGCHLD, so pclose() may find the
            # compiler gone and the generation fails ("pclose() failed", seen in the
            # suite). Uncompiled graphs give the same results; Metal is unaffected.
            mx.disable_compile()
        self.report_progress(0.05, "reading weights")
        self._model, tokenizer = load(self.path)
        self.report_progress(0.9, "preparing the tokenizer")
        self._tokenizer = tokenizer
        self._eos = frozenset(tokenizer.eos_token_ids)
        self._vocab_size = len(tokenizer.get_vocab())
        self._batchable = all(hasattr(c, "merge") for c in make_prompt_cache(self._model))
        args = getattr(self._model, "args", None)
        plan = self._plan_batch(getattr(args, "max_position_embeddings", None) or 4096,
                                _kv_bytes_per_token(args), psutil.virtual_memory().available)
        self._context_length = plan.context
        if not self._batchable:
            self.parallel_sequences = 1
            self.batch_plan = "one request at a time: this model's caches cannot be batched"
        self._template = self._template_from(tokenizer, self.options)

    def _load_summary(self) -> str:
        return f"chat template: {'yes' if self._template else 'no'}"

    def _wake(self) -> None:
        self._wakeup.notify()

    def _queue_lengths(self) -> tuple[int, int]:
        return len(self._active), len(self._pending)

    # generation ------------------------------------------------------------
    def _queue(self, request: GenerationRequest) -> RequestStream:
        if request.json_schema is not None:
            self._schema_grammar(request.json_schema)  # one it cannot enforce is a 400 now
        stream = RequestStream(request.request_id, self.abort)
        if not self._pending.put(request.client, (request, stream)):
            raise queue_full(self.model_id, len(self._pending))
        self._wakeup.notify()
        return stream

    def abort(self, request_id: str) -> None:
        if self._pending.remove(lambda waiting: waiting[0].request_id == request_id):
            return  # it never started
        self._aborts.append(request_id)
        self._wakeup.notify()

    # the model's thread ------------------------------------------------------
    def _serve(self) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import LRUPromptCache

        self._stream = mx.default_stream(mx.default_device())
        self._prompt_caches = LRUPromptCache(PROMPT_CACHES)
        self._generator = self._new_generator()
        try:
            while not self._stopping:
                self._apply_aborts()
                self._admit()
                if not self._active:
                    self._wakeup.wait(0.5)
                    continue
                try:
                    self._step()
                except Exception as exc:  # an MLX failure ends the batch, not the thread
                    self._fail_running(EngineError(f"MLX generation failed: {exc}"))
        finally:
            if self._generator is not None:
                self._generator.close()
            self._generator = self._prompt_caches = None
            self._model = None
            mx.clear_cache()

    def _new_generator(self) -> Any:
        if not self._batchable:
            return None
        from mlx_lm.generate import BatchGenerator

        n = self.parallel_sequences
        # no stop tokens: the engine ends each request itself
        return BatchGenerator(self._model, completion_batch_size=n, prefill_batch_size=n,
                              prefill_step_size=self.options.batch_tokens, stream=self._stream)

    def _fail_running(self, error: EngineError) -> None:
        logger.opt(exception=True).error("MLX generation failed for {}", self.model_id)
        for seq in list(self._active.values()):
            seq.stream.push(GenerationDelta(error=error))
        self._active.clear()
        if self._generator is not None:  # its batch is in an unknown state: start afresh
            self._generator.close()
            self._generator = self._new_generator()

    def _fail_all(self, error) -> None:
        for seq in list(self._active.values()):
            seq.stream.push(GenerationDelta(error=error))
        self._active.clear()
        for _, stream in self._pending.drain():
            stream.push(GenerationDelta(error=error))

    def _apply_aborts(self) -> None:
        while self._aborts:
            request_id = self._aborts.popleft()
            seq = next((s for s in self._active.values()
                        if s.request.request_id == request_id), None)
            if seq is not None:
                self._end([seq], keep_cache=False)

    def _admit(self) -> None:
        while len(self._active) < self.parallel_sequences:
            waiting = self._pending.get()
            if waiting is None:
                return
            request, stream = waiting
            if not stream.finished:
                self._start(request, stream)

    def _start(self, request: GenerationRequest, stream: RequestStream) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache

        prompt = request.prompt_tokens
        max_tokens = (self._context_length - len(prompt) if request.max_tokens is None
                      else request.max_tokens)
        entries = (None if request.prompt_logprobs is None else
                   self._prompt_logprobs(prompt, request.prompt_logprobs))
        if max_tokens == 0:  # the prompt was only to be scored
            stream.push(GenerationDelta(finish_reason="length", usage=Usage(len(prompt), 0, 0),
                                        prompt_logprobs=entries))
            return
        sampler, processors = self._sampler(request.sampling), self._processors(request)
        if self._generator is not None:
            cache, cached = self._cached_prefix(prompt)
            (uid,) = self._generator.insert(
                [prompt[cached:]], max_tokens=[max_tokens], caches=[cache],
                all_tokens=[list(prompt[:cached])], samplers=[sampler],
                logits_processors=[processors])
            steps = None
        else:
            uid, cached = next(self._uids), 0
            steps = generate_step(mx.array(prompt), self._model, self._stream,
                                  max_tokens=max_tokens, sampler=sampler,
                                  logits_processors=processors,
                                  prompt_cache=make_prompt_cache(self._model),
                                  prefill_step_size=self.options.batch_tokens)
        self._active[uid] = _Sequence(
            uid=uid, request=request, stream=stream, max_tokens=max_tokens,
            detokenizer=self._tokenizer.detokenizer, stops=StopMatcher(request.stop),
            cached=cached, prompt_entries=entries, steps=steps)

    def _cached_prefix(self, prompt: list[int]) -> tuple[list[Any], int]:
        """A KV cache that holds the longest prefix of `prompt` any earlier
        request left (a copy), and that prefix's length; the last prompt
        token is always fed again: its logits start the output."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, \
            trim_prompt_cache

        cache, rest = self._prompt_caches.fetch_nearest_cache(_CACHE_KEY, prompt)
        cached = len(prompt) - len(rest)
        if cache is not None and not rest:
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                cached -= 1
            else:
                cache = None
        if cache is None:
            return make_prompt_cache(self._model), 0
        return cache, cached

    def _step(self) -> None:
        if self._generator is None:
            for seq in list(self._active.values()):
                token, logprobs = next(seq.steps)  # type: ignore[arg-type]
                if self._accept(seq, int(token), logprobs):
                    del self._active[seq.uid]
            return
        _, responses = self._generator.next()  # prompts advance a chunk, each row a token
        ended = []
        for response in responses:
            seq = self._active.get(response.uid)
            if seq is None or not self._accept(seq, response.token, response.logprobs):
                continue
            if response.finish_reason is not None:  # max_tokens: the generator let it go
                del self._active[seq.uid]
                self._keep_cache(response.prompt_cache, response.all_tokens)
            else:
                ended.append(seq)
        self._end(ended)

    def _accept(self, seq: _Sequence, token: int, logprobs: Any) -> bool:
        """One new token of `seq`: its text to the client; True when it ended."""
        seq.generated += 1
        self._count_tokens(1)
        request = seq.request
        entries = None
        if request.logprobs is not None:
            import mlx.core as mx

            row = np.array(logprobs.astype(mx.float32)).reshape(-1)
            entries = [logprob_entry(self._piece, row, token, request.logprobs)]
        finish = None
        if token in self._eos and not request.ignore_eos:
            finish, text = "stop", self._rest_of_text(seq)
        else:
            seq.detokenizer.add_token(token)
            text, stopped = seq.stops.feed(seq.detokenizer.last_segment)
            if stopped:
                finish = "stop"
            elif seq.generated >= seq.max_tokens:
                text += self._rest_of_text(seq)
                finish = "stop" if seq.stops.matched else "length"
        first = seq.take_prompt_entries()
        if finish is None:
            seq.stream.push(GenerationDelta(text=text, token_count=1, logprobs=entries,
                                            prompt_logprobs=first))
            return False
        seq.stream.push(GenerationDelta(
            text=text, token_count=1, finish_reason=finish, logprobs=entries,
            usage=Usage(len(request.prompt_tokens), seq.generated, seq.cached),
            stop_sequence=seq.stops.matched, prompt_logprobs=first))
        return True

    @staticmethod
    def _rest_of_text(seq: _Sequence) -> str:
        """What the detokenizer and the stop matcher still hold, at the end."""
        seq.detokenizer.finalize()
        text, stopped = seq.stops.feed(seq.detokenizer.last_segment)
        return text if stopped else text + seq.stops.flush()

    def _end(self, ended: list[_Sequence], keep_cache: bool = True) -> None:
        """Take sequences out of the batch now; their KV caches go to the LRU."""
        for seq in ended:
            del self._active[seq.uid]
        if self._generator is None or not ended:
            return
        caches = self._generator.remove([seq.uid for seq in ended],
                                        return_prompt_caches=keep_cache)
        for cache, tokens in caches.values():
            self._keep_cache(cache, tokens)

    def _keep_cache(self, cache: Optional[list[Any]], tokens: Optional[list[int]]) -> None:
        if cache and tokens:
            self._prompt_caches.insert_cache(_CACHE_KEY, list(tokens), cache)

    # sampling ----------------------------------------------------------------
    @staticmethod
    def _sampler(s: SamplingParams) -> Optional[Callable[[Any], Any]]:
        """The request's own sampler: None (the batch's shared argmax) when
        greedy. A seed gives the request its own random key, so what it draws
        does not depend on the requests it shares the batch with."""
        if s.greedy:
            return None
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        filters: list[Callable[[Any], Any]] = []
        if 0.0 < s.top_p < 1.0:
            filters.append(lambda x: apply_top_p(x, s.top_p))
        if s.min_p > 0.0:
            filters.append(lambda x: apply_min_p(x, s.min_p))
        if s.top_k > 0:
            filters.append(lambda x: apply_top_k(x, s.top_k) if s.top_k < x.shape[-1] else x)
        key = [None if s.seed is None else mx.random.key(s.seed & 0xFFFFFFFFFFFFFFFF)]

        def sample(logprobs: Any) -> Any:
            for keep in filters:
                logprobs = keep(logprobs)
            scaled = logprobs * (1.0 / s.temperature)
            if key[0] is None:
                return mx.random.categorical(scaled)
            key[0], draw = mx.random.split(key[0])
            return mx.random.categorical(scaled, key=draw)

        return sample

    def _processors(self, request: GenerationRequest) -> list[Callable[[Any, Any], Any]]:
        from mlx_lm.sample_utils import make_logits_processors

        s = request.sampling
        processors = ([self._schema_processor(request.json_schema)]
                      if request.json_schema is not None else [])
        if request.ignore_eos:
            processors.append(self._ban_tokens(self._eos))
        return processors + make_logits_processors(
            logit_bias=s.logit_bias or None,
            repetition_penalty=s.repetition_penalty if s.repetition_penalty != 1.0 else None,
            presence_penalty=s.presence_penalty or None,
            frequency_penalty=s.frequency_penalty or None)

    def _schema_processor(self, schema: dict[str, Any]) -> Any:
        """A logits processor that lets through only the tokens that keep the
        output valid JSON for `schema` (llguidance's matcher; compact JSON)."""
        import mlx.core as mx
        import llguidance
        import llguidance.numpy as lnp

        guidance = self._guidance_tokenizer()
        matcher = llguidance.LLMatcher(guidance, self._schema_grammar(schema))
        vocab = guidance.vocab_size
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
    def _ban_tokens(token_ids: frozenset[int]) -> Any:
        """A logits processor that never lets `token_ids` be sampled
        (`ignore_eos`: the end tokens are banned, as llama.cpp's server does)."""
        import mlx.core as mx

        banned = mx.array(sorted(token_ids), dtype=mx.int32)

        def process(tokens: Any, logits: Any) -> Any:
            logits[..., banned] = -float("inf")
            return logits

        return process

    def _guidance_tokenizer(self) -> Any:
        if self._guidance is None:
            import llguidance.hf

            self._guidance = llguidance.hf.from_tokenizer(self._tokenizer._tokenizer)
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

    # logprobs ----------------------------------------------------------------
    def _piece(self, token: int) -> bytes:
        return self._tokenizer.decode([token]).encode("utf-8")

    def _prompt_logprobs(self, prompt: list[int], top: int) -> list[dict[str, Any]]:
        """Each prompt token's log-probability given the tokens before it: a
        pass of its own over the prompt (a fresh cache, in chunks), so the
        prompt caches and the generation that follows are untouched."""
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        entries = [first_entry(self._piece, prompt[0])]
        cache = make_prompt_cache(self._model)
        for start in range(0, len(prompt) - 1, PROMPT_SCORE_CHUNK):
            chunk = prompt[start:start + PROMPT_SCORE_CHUNK]
            logits = self._model(mx.array(chunk)[None], cache=cache)[0].astype(mx.float32)
            for i, row in enumerate(np.array(logits)):
                target = start + i + 1
                if target < len(prompt):
                    entries.append(logprob_entry(self._piece, log_softmax(row), prompt[target],
                                                 top))
        return entries


def _kv_bytes_per_token(args: Any) -> int:
    """What one token of one sequence takes in a 16-bit KV cache, from the
    model's configuration (0 where it does not say: the plan then uses the cap)."""
    layers = getattr(args, "num_hidden_layers", None) or 0
    heads = getattr(args, "num_attention_heads", None) or 1
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    head_dim = getattr(args, "head_dim", None) or (getattr(args, "hidden_size", 0) or 0) // heads
    return kv_bytes_per_token(layers, kv_heads, head_dim, head_dim)
