"""Embeddings from a loaded llama.cpp model: a second context on the same
weights, with pooling, used by the model's scheduler thread between steps.

An embedding model (BERT-like GGUF) pools the way its file says; a
generative model has no pooling of its own, so its last hidden states are
mean-pooled. Vectors are L2-normalised, as OpenAI's are.
"""
from __future__ import annotations

from typing import Any

import numpy as np

import llama_cpp as _lib

from ..core.exceptions import EngineError, ModelLoadError


class LlamaCppEmbedder:
    def __init__(self, model: Any, n_ctx: int, threads: int):
        self.n_ctx = n_ctx
        self.n_embd = _lib.llama_model_n_embd(model)
        self._ctx = self._context(model, n_ctx, threads, _lib.LLAMA_POOLING_TYPE_UNSPECIFIED)
        if _lib.llama_pooling_type(self._ctx) == _lib.LLAMA_POOLING_TYPE_NONE:
            _lib.llama_free(self._ctx)
            self._ctx = self._context(model, n_ctx, threads, _lib.LLAMA_POOLING_TYPE_MEAN)
        self._memory = _lib.llama_get_memory(self._ctx)
        self._batch = _lib.llama_batch_init(n_ctx, 0, 1)

    @staticmethod
    def _context(model: Any, n_ctx: int, threads: int, pooling: int) -> Any:
        params = _lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = pooling
        params.no_perf = True
        ctx = _lib.llama_init_from_model(model, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create an embedding context: out of memory?")
        return ctx

    def embed(self, tokens: list[int]) -> np.ndarray:
        """The normalised embedding of one input (at most n_ctx tokens)."""
        _lib.llama_memory_clear(self._memory, True)
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = len(tokens)
        rc = _lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} while embedding")
        pooled = _lib.llama_get_embeddings_seq(self._ctx, 0)
        if not pooled:
            raise EngineError("llama.cpp returned no pooled embedding")
        vector = np.ctypeslib.as_array(pooled, shape=(self.n_embd,)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def close(self) -> None:
        _lib.llama_batch_free(self._batch)
        _lib.llama_free(self._ctx)
