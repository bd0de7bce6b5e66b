"""llama.cpp engine, driven through llama-cpp-python's low-level API.

The high-level `Llama` class generates one request at a time and its
`create_completion` can run past `max_tokens` on a UTF-8 character split
across tokens, so this engine runs its own token loop: one scheduler in a
native thread that decodes every running sequence in one `llama_decode`
call per step (each request is its own `seq_id`), feeds prompts in bounded
chunks, samples with llama.cpp's own samplers and hands each request its text.
"""
from __future__ import annotations

import ctypes
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import psutil
from loguru import logger

import llama_cpp as _lib
from llama_cpp.llama_grammar import json_schema_to_gbnf

from ..core.batch_plan import kv_bytes_per_token
from ..core.concurrency import CrossThreadQueue, NativeWakeup
from ..core.exceptions import (EngineError, InvalidRequestError, ModelLoadError,
                               RequestTimeoutError, ServiceError)
from ..core.fair_queue import FairQueue, queue_full
from ..core.inference_engine import (EngineCapabilities, GenerationDelta,
                                     GenerationRequest, InferenceEngine, RequestStream,
                                     SamplingParams, Usage)
from ..core.text_stream import IncrementalText
from ..utils.names import Engine
from .chat_template import ChatTemplate, render_or_refuse
from .llamacpp_embeddings import LlamaCppEmbedder
from .logprobs import first_entry, log_softmax, logprob_entry

_LAX_JSON_CHAR = r'char ::= [^"\\] |'
_STRICT_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
_backend_ready = False
LLAMA_MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
_LOG_LEVELS = {3: "WARNING", 4: "ERROR"}  # ggml_log_level: 2 is INFO, 5 continues a line


@_lib.llama_log_callback
def _forward_native_log(level: int, text: bytes, _user_data: Any) -> None:
    # llama.cpp is chatty at INFO; keep its warnings and errors only.
    if level in _LOG_LEVELS and text:
        logger.log(_LOG_LEVELS[level], "llama.cpp: {}", text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        _lib.llama_log_set(_forward_native_log, ctypes.c_void_p(0))
        _lib.llama_backend_init()
        _backend_ready = True


@dataclass(eq=False)
class _Slot:
    """One llama.cpp sequence (`seq_id`) and the tokens whose KV it still holds,
    from position 0: after a request ends its KV stays, so the next request
    that starts with the same tokens (a system prompt, a growing chat) skips them."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    released_at: float = 0.0  # monotonic time the last request left it


# A free slot is reused in place when the new prompt keeps at least this share
# of what it caches (a chat that grows by a turn); otherwise its cache is left
# for the conversation it belongs to and the prefix is copied to another slot.
SLOT_PREFIX_SIMILARITY = 0.5
# Copying a slot costs one pass over its whole KV buffer, recomputing costs a
# forward pass per token: below this many shared tokens, recompute.
MIN_COPIED_PREFIX = 32


@dataclass
class _EmbedJob:
    inputs: list[list[int]]
    done: CrossThreadQueue  # gets the vectors, or the error
    cancelled: bool = False


@dataclass
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    slot: _Slot
    max_tokens: int
    prompt_left: list[int]
    text: IncrementalText
    sampler: "_Sampler"
    n_past: int = 0  # tokens decoded into the KV cache
    cached_tokens: int = 0  # prompt tokens reused from the slot's cache
    generated: list[int] = field(default_factory=list)
    logits_index: int = -1  # row of this step's logits that belongs to us
    # prompt logprobs asked for: the entries so far (handed out with the first delta)
    prompt_entries: Optional[list[dict[str, Any]]] = None
    scored_rows: list[tuple[int, int]] = field(default_factory=list)  # (logits row, prompt index)

    def take_prompt_entries(self) -> Optional[list[dict[str, Any]]]:
        entries, self.prompt_entries = self.prompt_entries, None
        return entries

    @property
    def prefilling(self) -> bool:
        return bool(self.prompt_left)

    def known_tokens(self) -> list[int]:
        """The tokens whose KV this sequence's slot holds now."""
        return (self.request.prompt_tokens + self.generated)[: self.n_past]


class LlamaCppEngine(InferenceEngine):
    name = Engine.LLAMA_CPP
    library = "llama.cpp"

    def __init__(self, model_id: str, options=None):
        super().__init__(model_id, options)
        self._model = None
        self._ctx = None
        self._vocab = None
        self._batch = None
        self._n_batch = 0
        self._threads = 0
        self._template: Optional[ChatTemplate] = None
        self._bos_text = ""
        self._add_bos = False
        self._pending: FairQueue[tuple[GenerationRequest, RequestStream, Any]] = \
            FairQueue(self.options.max_waiting)
        self._aborts: deque[str] = deque()
        self._embed_jobs: deque[_EmbedJob] = deque()
        self._embedder: Optional[LlamaCppEmbedder] = None  # made on the first embedding request
        self._active: dict[str, _Sequence] = {}
        self._free_slots: list[_Slot] = []
        self._wakeup = NativeWakeup()

    # lifecycle -----------------------------------------------------------
    @classmethod
    def check_model(cls, model_path: str) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelLoadError(f"Model file not found: {path}")
        with path.open("rb") as fh:
            header = fh.read(8)
        version = int.from_bytes(header[4:8], "little") if len(header) == 8 else 0
        if header[:4] != b"GGUF" or not 1 <= version <= 3:
            raise ModelLoadError(f"{path.name} is not a GGUF model file; the llama.cpp engine "
                                 f"loads GGUF files (.gguf).")

    def _open(self) -> None:
        path = Path(self.path)
        _init_backend()
        opts = self.options
        model_params = _lib.llama_model_default_params()

        def weights_read(fraction: float, _user_data: Any) -> bool:
            self.report_progress(0.9 * fraction, "reading weights")
            return True  # go on

        # kept referenced until the load returns: llama.cpp calls it from C
        on_progress = _lib.llama_progress_callback(weights_read)
        model_params.progress_callback = on_progress
        model = _lib.llama_model_load_from_file(str(path).encode(), model_params)
        self.report_progress(0.9, "allocating the context")
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path.name} (not a valid GGUF model?)")
        plan = self._plan_batch(_lib.llama_model_n_ctx_train(model), _kv_bytes_per_token(model),
                                psutil.virtual_memory().available)
        per_seq, n_seq = plan.context, plan.sequences
        if n_seq > LLAMA_MAX_SEQUENCES:
            _lib.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp decodes at most {LLAMA_MAX_SEQUENCES} sequences "
                                 f"at once; {n_seq} were asked for (MAX_BATCH_SIZE).")
        self._threads = opts.threads or psutil.cpu_count(logical=False) or 1
        ctx_params = _lib.llama_context_default_params()
        ctx_params.n_ctx = per_seq * n_seq
        ctx_params.n_batch = ctx_params.n_ubatch = max(opts.batch_tokens, n_seq)
        ctx_params.n_seq_max = n_seq
        ctx_params.n_threads = self._threads
        ctx_params.n_threads_batch = self._threads
        ctx_params.kv_unified = False  # each sequence owns n_ctx / n_seq cells
        ctx_params.no_perf = True
        ctx = _lib.llama_init_from_model(model, ctx_params)
        if not ctx:
            _lib.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create a context for {path.name} "
                                 f"({per_seq} tokens x {n_seq} sequences): out of memory?")
        self._model, self._ctx = model, ctx
        self._vocab = _lib.llama_model_get_vocab(model)
        self._vocab_size = _lib.llama_vocab_n_tokens(self._vocab)
        self._context_length = _lib.llama_n_ctx_seq(ctx)
        self._memory = _lib.llama_get_memory(ctx)
        self._n_batch = ctx_params.n_batch
        self._batch = _lib.llama_batch_init(self._n_batch, 0, 1)
        self._free_slots = [_Slot(seq_id) for seq_id in range(n_seq)]
        self._add_bos = bool(_lib.llama_vocab_get_add_bos(self._vocab))
        self._template = self._load_template(model)

    def _load_summary(self) -> str:
        return f"{self._threads} threads, chat template: {'yes' if self._template else 'no'}"

    def _wake(self) -> None:
        self._wakeup.notify()

    def _close(self) -> None:
        _lib.llama_batch_free(self._batch)
        _lib.llama_free(self._ctx)
        _lib.llama_model_free(self._model)
        self._ctx = self._model = self._batch = self._vocab = None

    def _queue_lengths(self) -> tuple[int, int]:
        return len(self._active), len(self._pending)

    def _memory_bytes(self) -> int:
        model = self._model
        return _lib.llama_model_size(model) if model else 0

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(logprobs=True, prompt_logprobs=True, embeddings=True,
                                  grammar=True,
                                  tools=bool(self._template and self._template.takes_tools))

    # text ----------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (_lib.llama_token * size)()
        n = _lib.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, True)
        if n < 0:  # cannot happen for byte-level vocabularies, but be exact
            size = -n
            buf = (_lib.llama_token * size)()
            n = _lib.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, True)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        self.check_token_ids(tokens, "tokens")
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", "replace")

    def tokenizer_info(self) -> dict[str, Any]:
        vocab = self._vocab
        pad = _lib.llama_vocab_pad(vocab)
        info: dict[str, Any] = {
            "tokenizer_class": f"GGUF:{self._meta('tokenizer.ggml.model') or 'unknown'}",
            "bos_token": self._special_text(_lib.llama_vocab_bos(vocab)) or None,
            "eos_token": self._special_text(_lib.llama_vocab_eos(vocab)) or None,
            "pad_token": self._special_text(pad) if pad >= 0 else None,
            "add_bos_token": self._add_bos,
            "add_eos_token": bool(_lib.llama_vocab_get_add_eos(vocab)),
            "model_max_length": self._context_length, "vocab_size": self._vocab_size}
        if self._template is not None:
            info["chat_template"] = self._template.source
        return info

    def _meta(self, key: str) -> Optional[str]:
        buf = ctypes.create_string_buffer(256)
        n = _lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def render_chat(self, messages, tools=None, add_generation_prompt=True,
                    template_kwargs=None) -> str:
        prompt = render_or_refuse(self._template, self.model_id, messages, tools,
                                  add_generation_prompt, template_kwargs)
        # tokenize() adds BOS itself where the model wants one: don't add it twice
        if self._add_bos and self._bos_text and prompt.startswith(self._bos_text):
            prompt = prompt[len(self._bos_text):]
        return prompt

    # generation ------------------------------------------------------------
    def _queue(self, request: GenerationRequest) -> RequestStream:
        grammar = self._grammar_for(request)
        stream = RequestStream(request.request_id, self.abort)
        if not self._pending.put(request.client, (request, stream, grammar)):
            raise queue_full(self.model_id, len(self._pending))
        self._wakeup.notify()
        return stream

    def embed(self, inputs: list[list[int]], timeout: float) -> list[list[float]]:
        self.check_embedding_inputs(inputs)
        job = _EmbedJob(inputs, CrossThreadQueue())
        self._embed_jobs.append(job)
        self._wakeup.notify()
        try:
            got = job.done.take(timeout)
        finally:
            job.done.close()
        if not got:
            job.cancelled = True
            raise RequestTimeoutError("The embedding request took longer than REQUEST_TIMEOUT.")
        if isinstance(got[0], ServiceError):
            raise got[0]
        return got[0]

    def abort(self, request_id: str) -> None:
        if self._pending.remove(lambda waiting: waiting[0].request_id == request_id):
            return  # it never started: nothing to free
        self._aborts.append(request_id)
        self._wakeup.notify()

    # the scheduler (native thread) ----------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._stopping:
                self._apply_aborts()
                self._run_embedding_job()
                self._admit()
                if not self._active:
                    if not self._embed_jobs:
                        self._wakeup.wait(0.5)
                    continue
                self._step()
        finally:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None

    def _run_embedding_job(self) -> None:
        """One embedding request, between two decode steps."""
        if not self._embed_jobs:
            return
        job = self._embed_jobs.popleft()
        if job.cancelled:
            return
        try:
            if self._embedder is None:
                self._embedder = LlamaCppEmbedder(self._model, self._context_length, self._threads)
            job.done.put([self._embedder.embed(tokens).tolist() for tokens in job.inputs])
        except ServiceError as exc:
            job.done.put(exc)

    def _admit(self) -> None:
        while self._free_slots:
            waiting = self._pending.get()
            if waiting is None:
                break
            request, stream, grammar = waiting
            if stream.finished:
                continue
            prompt = request.prompt_tokens
            scoring = request.prompt_logprobs is not None
            # a scored prompt is decoded whole: cached KV has no logits to read
            slot, reuse = self._take_slot(prompt, reuse_cache=not scoring)
            limit = self._context_length - len(prompt)
            self._active[request.request_id] = _Sequence(
                request=request, stream=stream, slot=slot,
                max_tokens=limit if request.max_tokens is None else min(request.max_tokens, limit),
                prompt_left=list(prompt[reuse:]), n_past=reuse, cached_tokens=reuse,
                text=IncrementalText(request.stop),
                sampler=_Sampler(request.sampling, self._vocab, self._vocab_size, self._context_length,
                                 grammar),
                prompt_entries=[first_entry(self._piece, prompt[0])] if scoring else None)

    def _take_slot(self, prompt: list[int], reuse_cache: bool = True) -> tuple[_Slot, int]:
        """A free slot for `prompt` and how many of its tokens are in that
        slot's KV already (copied there from another slot if need be)."""
        running = [(seq.slot, seq.known_tokens()) for seq in self._active.values()]
        target, source, shared = plan_slot(self._free_slots, running, prompt)
        if not reuse_cache:
            source, shared = target, 0
        if source is not target:
            _lib.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, -1, -1)
        self._free_slots.remove(target)
        # at least the last prompt token is decoded again: its logits start the output
        reuse = min(shared, len(prompt) - 1)
        if not _lib.llama_memory_seq_rm(self._memory, target.seq_id, reuse, -1):
            _lib.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
            reuse = 0
        target.cached = prompt[:reuse]
        return target, reuse

    def _apply_aborts(self) -> None:
        while self._aborts:
            seq = self._active.pop(self._aborts.popleft(), None)
            if seq is not None:
                self._release(seq)

    def _release(self, seq: _Sequence, keep_cache: bool = True) -> None:
        seq.sampler.close()
        slot = seq.slot
        if keep_cache:
            slot.cached = seq.known_tokens()
        else:
            _lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
        slot.released_at = time.monotonic()
        self._free_slots.append(slot)

    def _step(self) -> None:
        seqs = list(self._active.values())
        # running sequences get one token each, prompts share the room left in
        # arrival order, in chunks, so a long prompt never stalls the others
        room = self._n_batch - sum(not seq.prefilling for seq in seqs)
        chunks: list[tuple[_Sequence, list[int]]] = []
        for seq in seqs:
            if not seq.prefilling:
                chunks.append((seq, [seq.generated[-1]]))
            elif room > 0:
                chunk = seq.prompt_left[:room]
                del seq.prompt_left[: len(chunk)]
                room -= len(chunk)
                chunks.append((seq, chunk))
            seq.logits_index = -1
        # in seq_id order: llama.cpp decodes a batch in one pass per run of consecutive seq_ids
        chunks.sort(key=lambda c: c[0].slot.seq_id)
        batch, n = self._batch, 0
        for seq, chunk in chunks:
            scoring = seq.prompt_entries is not None and seq.n_past < len(seq.request.prompt_tokens)
            seq.scored_rows = []
            for i, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = seq.n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot.seq_id
                batch.logits[n] = 0
                target = seq.n_past + i + 1  # the prompt token these logits predict
                if scoring and target < len(seq.request.prompt_tokens):
                    batch.logits[n] = 1
                    seq.scored_rows.append((n, target))
                n += 1
            seq.n_past += len(chunk)
            if not seq.prefilling:  # its prompt is all in: the last token's logits start the output
                batch.logits[n - 1] = 1
                seq.logits_index = n - 1
        batch.n_tokens = n
        rc = _lib.llama_decode(self._ctx, batch)
        if rc != 0:
            error = EngineError(f"llama_decode failed with code {rc}")
            for seq in seqs:
                self._finish(seq, error=error, keep_cache=False)
            return
        produced = 0
        for seq in seqs:
            if seq.scored_rows and seq.prompt_entries is not None:
                prompt, top = seq.request.prompt_tokens, seq.request.prompt_logprobs or 0
                seq.prompt_entries += [self._logprobs(row, prompt[target], top)
                                       for row, target in seq.scored_rows]
            if seq.logits_index >= 0 and seq.max_tokens == 0 and not seq.stream.finished:
                self._finish(seq, reason="length")  # the prompt was only to be scored
            elif seq.logits_index >= 0 and not seq.stream.finished:
                token = seq.sampler.sample(self._ctx, seq.logits_index)
                logprobs = None
                if seq.request.logprobs is not None:
                    logprobs = self._logprobs(seq.logits_index, token, seq.request.logprobs)
                self._accept(seq, token, logprobs)
                produced += 1
        self._count_tokens(produced, sequences=produced)

    def _accept(self, seq: _Sequence, token: int, logprobs: Optional[dict[str, Any]]) -> None:
        seq.generated.append(token)
        entries = [logprobs] if logprobs is not None else None
        if not seq.request.ignore_eos and _lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, text=seq.text.finish(), reason="stop", logprobs=entries)
            return
        text = seq.text.feed(self._piece(token))
        if seq.text.stopped:
            self._finish(seq, text=text, reason="stop", logprobs=entries)
        elif len(seq.generated) >= seq.max_tokens:
            self._finish(seq, text=text + seq.text.finish(),
                         reason="stop" if seq.text.stopped else "length", logprobs=entries)
        else:
            seq.stream.push(GenerationDelta(text=text, token_count=1, logprobs=entries,
                                            prompt_logprobs=seq.take_prompt_entries()))

    def _finish(self, seq: _Sequence, text: str = "", reason: Optional[str] = None,
                error=None, keep_cache: bool = True,
                logprobs: Optional[list[dict[str, Any]]] = None) -> None:
        self._active.pop(seq.request.request_id, None)
        self._release(seq, keep_cache)
        usage = Usage(prompt_tokens=len(seq.request.prompt_tokens),
                      completion_tokens=len(seq.generated), cached_tokens=seq.cached_tokens)
        seq.stream.push(GenerationDelta(text=text, token_count=1 if seq.generated else 0,
                                        finish_reason=reason, usage=usage, error=error,
                                        logprobs=logprobs,
                                        prompt_logprobs=seq.take_prompt_entries(),
                                        stop_sequence=seq.text.matched if reason else None))

    def _fail_all(self, error) -> None:
        while self._embed_jobs:
            self._embed_jobs.popleft().done.put(error)
        for seq in list(self._active.values()):
            self._finish(seq, error=error)
        for _, stream, _ in self._pending.drain():
            stream.push(GenerationDelta(error=error))

    # helpers -------------------------------------------------------------
    def _grammar_for(self, request: GenerationRequest) -> Optional[bytes]:
        """The GBNF that constrains this request, checked now so that a bad one is a 400."""
        if request.json_schema is None:
            return None
        try:
            grammar = json_schema_to_gbnf(json.dumps(request.json_schema))
            # strict JSON has no raw control characters in strings; this
            # converter's `char` rule allows them, and clients' parsers refuse them
            grammar = grammar.replace(_LAX_JSON_CHAR, _STRICT_JSON_CHAR)
        except Exception as exc:  # the converter raises plain errors for what it lacks
            raise InvalidRequestError(f"This JSON schema cannot be enforced: {exc}",
                                      param="response_format") from None
        encoded = grammar.encode("utf-8")
        sampler = _lib.llama_sampler_init_grammar(self._vocab, encoded, b"root")
        if not sampler:
            raise InvalidRequestError("This JSON schema's grammar does not parse.",
                                      param="response_format")
        _lib.llama_sampler_free(sampler)
        return encoded

    def _logprobs(self, logits_index: int, token: int, top: int) -> dict[str, Any]:
        """The model's log-probability of `token`, and of the `top` likeliest tokens."""
        row = np.ctypeslib.as_array(_lib.llama_get_logits_ith(self._ctx, logits_index),
                                    shape=(self._vocab_size,))
        return logprob_entry(self._piece, log_softmax(row), token, top)

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = _lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = _lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = _lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def _load_template(self, model) -> Optional[ChatTemplate]:
        source = _lib.llama_model_chat_template(model, None)
        text = (self.options.chat_template_override
                or (source.decode("utf-8", "replace") if source else self.options.chat_template))
        if not text:
            return None
        self._bos_text = self._special_text(_lib.llama_vocab_bos(self._vocab))
        eos = self._special_text(_lib.llama_vocab_eos(self._vocab))
        try:
            return ChatTemplate(text, bos_token=self._bos_text, eos_token=eos)
        except ValueError as exc:
            logger.warning("Model {} has an unusable chat template: {}", self.model_id, exc)
            return None


class _Sampler:
    """One request's llama.cpp sampler chain: it reads the logits where
    llama_decode left them, in C, whatever the vocabulary's size.
    Penalties count the generated tokens, as OpenAI's do. Plain greedy
    decoding is an argmax over the logits row: the chain would first copy the
    whole vocabulary into a candidate array (6 ms a step for 16 sequences of
    Gemma's 262k tokens)."""

    def __init__(self, params: SamplingParams, vocab, n_vocab: int, window: int,
                 grammar: Optional[bytes] = None):
        self._vocab_size = n_vocab
        penalised = bool(params.repetition_penalty != 1.0 or params.frequency_penalty
                         or params.presence_penalty)
        self._argmax = (params.greedy and not params.logit_bias and not penalised
                        and grammar is None)
        self._chain = _lib.llama_sampler_chain_init(_lib.llama_sampler_chain_default_params())
        if params.logit_bias:
            biases = (_lib.llama_logit_bias * len(params.logit_bias))(
                *(_lib.llama_logit_bias(token, bias) for token, bias in params.logit_bias.items()))
            self._add(_lib.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if penalised:
            self._add(_lib.llama_sampler_init_penalties(
                n_vocab, window, params.repetition_penalty, params.frequency_penalty,
                params.presence_penalty))
        if grammar is not None:  # before the choice: only tokens the grammar allows compete
            self._add(_lib.llama_sampler_init_grammar(vocab, grammar, b"root"))
        if params.greedy:
            self._add(_lib.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            self._add(_lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            self._add(_lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            self._add(_lib.llama_sampler_init_min_p(params.min_p, 1))
        self._add(_lib.llama_sampler_init_temp(params.temperature))
        seed = _lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        self._add(_lib.llama_sampler_init_dist(seed))

    def _add(self, sampler) -> None:
        _lib.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx, logits_index: int) -> int:
        if self._argmax:
            row = _lib.llama_get_logits_ith(ctx, logits_index)
            return int(np.ctypeslib.as_array(row, shape=(self._vocab_size,)).argmax())
        return _lib.llama_sampler_sample(self._chain, ctx, logits_index)

    def close(self) -> None:
        if self._chain is not None:
            _lib.llama_sampler_free(self._chain)  # frees the samplers in the chain too
            self._chain = None


def plan_slot(free: list[_Slot], running: list[tuple[_Slot, list[int]]],
              prompt: list[int]) -> tuple[_Slot, _Slot, int]:
    """Where a new request goes: (the free slot it takes, the slot whose KV
    it starts from, how many prompt tokens that KV already holds).

    Without a unified KV cache, llama.cpp decodes a batch in one pass per run
    of consecutive seq_ids, so a slot next to running ones is worth far more
    than one that splits the batch; among equals, the least recently used.
    The longest prefix of the prompt held by any slot, free or running, is
    reused in place when that slot is as well placed and mostly holds this
    very conversation, else copied whole into the chosen slot when long
    enough to be worth it."""
    running_ids = {slot.seq_id for slot, _ in running}

    def neighbours(slot: _Slot) -> int:
        return (slot.seq_id - 1 in running_ids) + (slot.seq_id + 1 in running_ids)

    target = max(free, key=lambda s: (neighbours(s), -s.released_at))
    holders = [(slot, slot.cached) for slot in free] + running
    source, held = max(holders, key=lambda h: _shared_prefix(h[1], prompt))
    shared = _shared_prefix(held, prompt)
    if (source in free and neighbours(source) >= neighbours(target)
            and shared >= SLOT_PREFIX_SIMILARITY * len(source.cached)):
        return source, source, shared
    if shared >= MIN_COPIED_PREFIX:
        return target, source, shared
    return target, target, 0


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _kv_bytes_per_token(model) -> int:
    """What one token of one sequence takes in llama.cpp's f16 KV cache, every
    layer counted (sliding-window layers too: their caches are full-size by default,
    which keeps a finished request's prefix reusable)."""
    def meta(key: str) -> Optional[int]:
        buf = ctypes.create_string_buffer(64)
        n = _lib.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return int(buf.value) if n > 0 and buf.value.isdigit() else None

    arch = ctypes.create_string_buffer(64)
    _lib.llama_model_meta_val_str(model, b"general.architecture", arch, len(arch))
    prefix = arch.value.decode("utf-8", "replace")
    head_dim = _lib.llama_model_n_embd(model) // max(_lib.llama_model_n_head(model), 1)
    key = meta(f"{prefix}.attention.key_length") or head_dim
    value = meta(f"{prefix}.attention.value_length") or head_dim
    return kv_bytes_per_token(_lib.llama_model_n_layer(model), _lib.llama_model_n_head_kv(model),
                              key, value)
