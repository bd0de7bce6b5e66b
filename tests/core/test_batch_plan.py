"""The automatic batch size and context (src/core/batch_plan.py)."""
from __future__ import annotations

from src.core.batch_plan import AUTO_CONTEXT, AUTO_MAX_SEQUENCES, KV_MEMORY_SHARE, plan_batch

GIB = 2**30
GEMMA_KV = 18 * 1 * (256 + 256) * 2  # Gemma 3 270M: bytes of f16 KV a token


def test_plenty_of_memory_runs_the_cap_at_the_auto_context():
    plan = plan_batch(None, None, 32768, GEMMA_KV, 16 * GIB)
    assert (plan.sequences, plan.context) == (AUTO_MAX_SEQUENCES, AUTO_CONTEXT)
    assert plan.how.startswith("auto: 16 sequences x 4096 tokens")


def test_a_short_trained_context_is_the_limit():
    assert plan_batch(None, None, 2048, 256, 16 * GIB).context == 2048
    assert plan_batch(None, 0, 2048, 256, 16 * GIB).context == 2048  # 0: the model's own
    assert plan_batch(None, 8192, 2048, 256, 16 * GIB).context == 2048


def test_memory_bounds_the_sequences():
    per_sequence = GEMMA_KV * AUTO_CONTEXT
    free = int(5.5 * per_sequence / KV_MEMORY_SHARE)  # room for 5 sequences, not 6
    plan = plan_batch(None, None, 32768, GEMMA_KV, free)
    assert (plan.sequences, plan.context) == (5, AUTO_CONTEXT)
    assert "of the" in plan.how and "free holds" in plan.how


def test_without_room_for_one_sequence_an_auto_context_shrinks():
    free = int(GEMMA_KV * 1000 / KV_MEMORY_SHARE)
    plan = plan_batch(None, None, 32768, GEMMA_KV, free)
    assert plan.sequences == 1 and plan.context == 768  # whole pages of 256 tokens
    # a context the operator set is kept: the engine's allocation says whether it fits
    assert plan_batch(None, 4096, 32768, GEMMA_KV, free).context == 4096


def test_an_explicit_number_wins():
    plan = plan_batch(64, None, 32768, GEMMA_KV, GIB // 100)
    assert (plan.sequences, plan.context) == (64, AUTO_CONTEXT)
    assert plan.how == "set: 64 sequences x 4096 tokens"
