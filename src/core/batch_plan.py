"""How many sequences a model decodes at once, and how long each may be, when
the operator leaves MAX_BATCH_SIZE / CONTEXT_SIZE at `auto`.

A sequence costs its KV cache: `kv_bytes_per_token` x its context. The plan
gives the KV cache a share of the memory free at load time, runs as many
sequences as fit up to a cap (past it a CPU's decode step only grows longer),
and, when the context is automatic too, shortens the context before it drops
below one sequence. An explicit number is taken as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

AUTO_CONTEXT = 4096  # tokens per sequence when the model was trained on more
AUTO_MAX_SEQUENCES = 16  # decoding more at once gains a CPU little and costs every TTFT
KV_MEMORY_SHARE = 0.5  # of the memory free at load time: room for other models and the OS
MIN_AUTO_CONTEXT = 256


@dataclass(frozen=True)
class BatchPlan:
    sequences: int
    context: int  # tokens per sequence
    how: str  # why these figures: logged at load, shown in the model's status


def plan_batch(sequences: Optional[int], context: Optional[int], trained_context: int,
               kv_bytes_per_token: int, memory_free: int) -> BatchPlan:
    """`sequences` / `context`: the operator's numbers, None for automatic
    (context 0: the model's training context). `trained_context`: the
    model's own limit, which no context exceeds."""
    trained_context = max(trained_context, 1)
    auto_context = context is None
    if context is None:
        context = min(trained_context, AUTO_CONTEXT)
    else:
        context = min(context or trained_context, trained_context)
    if sequences is not None:
        return BatchPlan(sequences, context, f"set: {_sequences(sequences)} x {context} tokens")
    budget = int(memory_free * KV_MEMORY_SHARE)
    per_token = max(kv_bytes_per_token, 1)
    fit = budget // (per_token * context)
    if fit < 1 and auto_context:  # not one sequence of that length: a shorter one
        context = min(context, max(MIN_AUTO_CONTEXT, budget // per_token // 256 * 256))
        fit = 1
    n = min(max(fit, 1), AUTO_MAX_SEQUENCES)
    bound = f"at most {AUTO_MAX_SEQUENCES}" if fit >= AUTO_MAX_SEQUENCES else \
        f"what {KV_MEMORY_SHARE:.0%} of the {_gib(memory_free)} free holds"
    return BatchPlan(n, context, f"auto: {_sequences(n)} x {context} tokens, "
                                 f"{_gib(n * context * per_token)} of KV cache ({bound})")


def kv_bytes_per_token(layers: int, kv_heads: int, key_dim: int, value_dim: int) -> int:
    """One token of one sequence in a 16-bit KV cache, every layer."""
    return layers * kv_heads * (key_dim + value_dim) * 2


def _sequences(n: int) -> str:
    return f"{n} sequence" if n == 1 else f"{n} sequences"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
