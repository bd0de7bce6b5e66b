"""The llama.cpp engine driven directly (no server) on the tiny model."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from src.core.exceptions import ContextLengthExceededError, InvalidRequestError
from src.core.inference_engine import EngineOptions, GenerationRequest, SamplingParams
from src.engines.llamacpp_engine import LlamaCppEngine, _Slot, plan_slot
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def engine(tiny_model):
    eng = LlamaCppEngine("tiny", EngineOptions(context_size=256, parallel_sequences=4, threads=1))
    eng.load(str(tiny_model))
    yield eng
    eng.unload()


@contextmanager
def loaded_engine(model_path, name: str, **options):
    """A tiny-model engine of its own, unloaded afterwards."""
    eng = LlamaCppEngine(name, EngineOptions(context_size=256, threads=1, **options))
    eng.load(str(model_path))
    try:
        yield eng
    finally:
        eng.unload()


def run(engine, tokens, **kwargs):
    sampling = kwargs.pop("sampling", SamplingParams(temperature=0))
    rid = kwargs.pop("rid", "r")
    stream = engine.submit(GenerationRequest(rid, tokens, sampling=sampling, **kwargs))
    deltas = list(stream.iter_deltas())
    return "".join(d.text for d in deltas), deltas[-1]


def test_context_is_per_sequence(engine):
    assert engine.context_length == 256
    assert engine.status().parallel_sequences == 4
    assert engine.status().batch_plan == "set: 4 sequences x 256 tokens"


def test_sizes_left_automatic_are_planned_from_the_model(tiny_model, monkeypatch):
    import src.core.batch_plan as batch_plan
    from src.engines import llamacpp_engine

    # 2 layers x 2 KV heads x (16 + 16) dimensions x 2 bytes (f16), read from the file
    eng = LlamaCppEngine("tiny-auto", EngineOptions(threads=1))
    eng.load(str(tiny_model))
    try:
        assert llamacpp_engine._kv_bytes_per_token(eng._model) == 256
        assert eng.context_length == 2048  # the model's training context, below AUTO_CONTEXT
        assert eng.status().parallel_sequences == batch_plan.AUTO_MAX_SEQUENCES
        assert eng.status().batch_plan.startswith("auto: 16 sequences x 2048 tokens")
        # all 16 decode at once: none waits
        streams = [eng.submit(GenerationRequest(f"r{i}", [1, 2, 3], max_tokens=1500,
                                                sampling=SamplingParams(temperature=0)))
                   for i in range(16)]
        wait_until(lambda: eng.status().requests_running == 16, what="16 running at once")
        assert eng.status().requests_waiting == 0
        for stream in streams:
            stream.close()
    finally:
        eng.unload()
    # memory for 3 sequences of 2048 tokens only
    free = int(3.5 * 256 * 2048 / batch_plan.KV_MEMORY_SHARE)
    monkeypatch.setattr(llamacpp_engine.psutil, "virtual_memory",
                        lambda: type("Memory", (), {"available": free})())
    eng = LlamaCppEngine("tiny-auto-small", EngineOptions(threads=1))
    eng.load(str(tiny_model))
    try:
        assert eng.status().parallel_sequences == 3 and eng.context_length == 2048
        assert _lib_n_seq_max(eng) == 3
    finally:
        eng.unload()


def _lib_n_seq_max(eng) -> int:
    import llama_cpp

    return llama_cpp.llama_n_seq_max(eng._ctx)


def test_max_tokens_exact_even_inside_a_multibyte_character(engine):
    lead_byte = 0xC3  # byte tokens have the byte's value as id in the tiny vocabulary
    sampling = SamplingParams(temperature=0, logit_bias={lead_byte: 100.0})
    text, last = run(engine, engine.tokenize("ab"), max_tokens=5, sampling=sampling)
    assert last.usage.completion_tokens == 5 and last.finish_reason == "length"
    assert text == "\ufffd" * 5  # five lone lead bytes, none lost, none added


def test_greedy_is_deterministic_and_counts_tokens(engine):
    tokens = engine.tokenize("hello there")
    one, last = run(engine, tokens, max_tokens=30)
    two, _ = run(engine, tokens, max_tokens=30)
    assert one == two and last.usage.prompt_tokens == len(tokens)


def test_prompt_chunking_gives_the_same_result(tiny_model):
    small = LlamaCppEngine("tiny-small-batch", EngineOptions(context_size=256, parallel_sequences=2,
                                                             threads=1, batch_tokens=8))
    small.load(str(tiny_model))
    try:
        tokens = small.tokenize("a prompt longer than eight tokens, fed in chunks")
        chunked, _ = run(small, tokens, max_tokens=20)
    finally:
        small.unload()
    big = LlamaCppEngine("tiny-big-batch", EngineOptions(context_size=256, parallel_sequences=2,
                                                         threads=1))
    big.load(str(tiny_model))
    try:
        whole, _ = run(big, tokens, max_tokens=20)
    finally:
        big.unload()
    assert chunked == whole


def test_context_length_checked_at_submit(engine):
    with pytest.raises(ContextLengthExceededError) as err:
        engine.submit(GenerationRequest("long", [65] * 250, max_tokens=10))
    assert "256" in err.value.message and "260" in err.value.message


def test_logit_bias_outside_vocabulary_rejected(engine):
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest("b", [65], max_tokens=1,
                                        sampling=SamplingParams(logit_bias={10**6: 1.0})))


def test_abort_frees_the_slot(engine):
    streams = [engine.submit(GenerationRequest(f"a{i}", [65, 66], max_tokens=200))
               for i in range(4)]
    for s in streams:
        s.close()  # client gone: aborts
    text, last = run(engine, [65, 66], max_tokens=3, rid="after")
    assert last.finish_reason == "length"
    assert engine.status().requests_running == 0


def test_render_chat_uses_the_model_template(engine):
    prompt = engine.render_chat([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert engine.detokenize(engine.tokenize("hi there")) == "hi there"


def test_full_queue_is_refused_with_retry_after(tiny_model):
    eng = LlamaCppEngine("tiny-queue", EngineOptions(context_size=2048, parallel_sequences=1,
                                                     threads=1, max_waiting=2))
    eng.load(str(tiny_model))
    streams = []
    try:
        from src.core.exceptions import ServiceUnavailableError

        with pytest.raises(ServiceUnavailableError) as err:
            for i in range(10):  # one runs, two wait, the next is refused
                streams.append(eng.submit(GenerationRequest(  # none ends during the loop
                    f"q{i}", [65], max_tokens=2000, ignore_eos=True)))
        assert err.value.headers["Retry-After"] and err.value.status_code == 503
        assert 2 <= len(streams) <= 3
    finally:
        for s in streams:
            s.close()
        eng.unload()


def test_prefix_cache_reuses_a_finished_request(tiny_model):
    with loaded_engine(tiny_model, "tiny-cache", parallel_sequences=1) as eng:
        prompt = eng.tokenize("a system prompt shared by both requests, then a question")
        first, last1 = run(eng, prompt, max_tokens=10, rid="c1")
        assert last1.usage.cached_tokens == 0
        again, last2 = run(eng, prompt, max_tokens=10, rid="c2")
        assert again == first  # the cached KV gives exactly what recomputing gave
        assert last2.usage.cached_tokens == len(prompt) - 1
        # a conversation that grows: the earlier prompt is reused
        grown = prompt + eng.tokenize(" and a follow-up")
        _, last3 = run(eng, grown, max_tokens=5, rid="c3")
        assert last3.usage.cached_tokens >= len(prompt)
        different, last4 = run(eng, eng.tokenize("zzz unrelated"), max_tokens=5, rid="c4")
        assert last4.usage.cached_tokens == 0


def test_batched_greedy_equals_alone(tiny_model):
    with loaded_engine(tiny_model, "tiny-batch", parallel_sequences=4, batch_tokens=16) as eng:
        prompts = [eng.tokenize(f"prompt number {i} " * (i + 1)) for i in range(4)]
        alone = [run(eng, p, max_tokens=40, rid=f"alone{i}")[0] for i, p in enumerate(prompts)]
        eng_clear = [eng.submit(GenerationRequest(f"warm{i}", [65 + i], max_tokens=1))
                     for i in range(4)]
        for s in eng_clear:  # fill every slot with unrelated tokens: no cache hits below
            list(s.iter_deltas())
        streams = [eng.submit(GenerationRequest(f"b{i}", p, max_tokens=40,
                                                sampling=SamplingParams(temperature=0)))
                   for i, p in enumerate(prompts)]
        together = []
        for s in streams:
            deltas = list(s.iter_deltas())
            together.append("".join(d.text for d in deltas))
            assert deltas[-1].usage.completion_tokens == 40
        assert together == alone


def test_sampling_parameters_take_effect(engine):
    tokens = engine.tokenize("sampling check")
    greedy, _ = run(engine, tokens, max_tokens=20, rid="g")
    top1, _ = run(engine, tokens, max_tokens=20, rid="k1",
                  sampling=SamplingParams(temperature=1.5, top_k=1, seed=5))
    assert top1 == greedy  # only the best token survives top_k=1
    free = {run(engine, tokens, max_tokens=20, rid=f"s{seed}",
                sampling=SamplingParams(temperature=1.5, seed=seed))[0] for seed in range(3)}
    assert len(free) == 3  # different seeds, different samples
    biased = SamplingParams(temperature=0, logit_bias={65: 40.0})  # 65 is "A"
    plain_a = run(engine, tokens, max_tokens=40, rid="b", sampling=biased)[0].count("A")
    assert plain_a == 40
    biased.frequency_penalty = 2.0  # each "A" so far costs 2 more
    penalised_a = run(engine, tokens, max_tokens=40, rid="p", sampling=biased)[0].count("A")
    assert 3 < penalised_a < 30


def test_distinct_prefixes_stay_cached_side_by_side(tiny_model):
    with loaded_engine(tiny_model, "tiny-lru", parallel_sequences=2) as eng:
        a = eng.tokenize("first conversation with its own system prompt")
        b = eng.tokenize("first words differ: a second, unrelated conversation")
        for rid, prompt in (("a1", a), ("b1", b)):
            run(eng, prompt, max_tokens=3, rid=rid)
        assert run(eng, a, max_tokens=3, rid="a2")[1].usage.cached_tokens == len(a) - 1
        assert run(eng, b, max_tokens=3, rid="b2")[1].usage.cached_tokens == len(b) - 1


def test_prefix_of_a_running_request_is_copied(tiny_model):
    with loaded_engine(tiny_model, "tiny-share", parallel_sequences=3) as eng:
        system = eng.tokenize("You are a helpful assistant; answer briefly. " * 2)
        assert len(system) >= 40
        question = system + eng.tokenize("2+2?")
        alone, _ = run(eng, question, max_tokens=12, rid="alone")
        with loaded_engine(tiny_model, "tiny-share-2", parallel_sequences=3) as fresh:
            long_runner = fresh.submit(GenerationRequest(
                "runner", system + eng.tokenize("Tell a story."), max_tokens=100))
            next(long_runner.iter_deltas())  # its prompt is in the KV cache now
            shared, last = run(fresh, question, max_tokens=12, rid="sharer")
            long_runner.close()
        assert last.usage.cached_tokens >= len(system) - 1
        assert shared == alone  # copied KV gives what recomputing gave


def test_slot_plan_keeps_the_batch_in_one_run_of_seq_ids():
    slots = [_Slot(i, released_at=float(i)) for i in range(6)]
    free = [slots[i] for i in (0, 2, 4, 5)]
    running = [(slots[1], [7] * 50), (slots[3], [8] * 50)]
    # slot 2 fills the hole between two running sequences, though 0 is older
    assert plan_slot(free, running, [9] * 40) == (slots[2], slots[2], 0)
    # nothing running: the least recently used slot
    assert plan_slot(free, [], [9] * 40)[0] is slots[0]


def test_slot_plan_reuses_or_copies_cached_prefixes():
    slots = [_Slot(i, released_at=float(i)) for i in range(4)]
    chat = [5] * 100
    slots[2].cached = chat[:]
    running = [(slots[1], [6] * 40 + [1] * 10)]
    free = [slots[0], slots[2], slots[3]]
    # a chat grown by a turn continues in its own slot, next to the running one
    assert plan_slot(free, running, chat + [3] * 8) == (slots[2], slots[2], 100)
    # the running request's 40-token system prompt is copied next to it
    assert plan_slot(free, running, [6] * 40 + [2] * 30) == (slots[0], slots[1], 40)
    # a short shared prefix is not worth a copy
    assert plan_slot(free, running, [6] * 10 + [2] * 30) == (slots[0], slots[0], 0)
    # a free slot sharing a long prefix but holding another conversation keeps it
    assert plan_slot(free, running, chat[:40] + [4] * 30) == (slots[0], slots[2], 40)


def test_json_schema_constrains_even_a_random_model(engine):
    import json

    schema = {"type": "object", "properties": {"answer": {"type": "integer"},
                                               "mood": {"enum": ["happy", "sad"]},
                                               "note": {"type": "string", "maxLength": 30}},
              "required": ["answer", "mood", "note"], "additionalProperties": False}
    for seed in range(6):  # strict JSON: no raw control characters inside strings
        text, last = run(engine, engine.tokenize("reply"), max_tokens=200, rid=f"j{seed}",
                         sampling=SamplingParams(temperature=1.0, seed=seed), json_schema=schema)
        value = json.loads(text)
        assert isinstance(value["answer"], int) and value["mood"] in ("happy", "sad")
        assert last.finish_reason == "stop"
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest("bad", [65], max_tokens=5,
                                        json_schema={"type": "object", "properties": 7}))


def test_logprobs_are_the_models_distribution(engine):
    tokens = engine.tokenize("logprob check")
    stream = engine.submit(GenerationRequest("lp", tokens, max_tokens=6, logprobs=3,
                                             sampling=SamplingParams(temperature=0)))
    entries = [e for d in stream.iter_deltas() if d.logprobs for e in d.logprobs]
    assert len(entries) == 6
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top"]) == 3
        # greedy picks the likeliest token: it heads the alternatives
        assert e["top"][0]["token_id"] == e["token_id"]
        assert e["top"][0]["logprob"] >= e["top"][1]["logprob"] >= e["top"][2]["logprob"]
        assert e["bytes"] == list(e["token"].encode()) or "\ufffd" in e["token"]


def test_load_reports_its_progress(tiny_model):
    eng = LlamaCppEngine("tiny-progress", EngineOptions(context_size=256, threads=1))
    seen: list[tuple[float, str]] = []
    eng.report_progress = lambda fraction, stage: seen.append((fraction, stage))
    eng.load(str(tiny_model))
    try:
        reading = [f for f, stage in seen if stage == "reading weights"]
        assert reading and reading == sorted(reading) and reading[-1] <= 0.9
        assert ("allocating the context" in {s for _, s in seen}) and seen[-1] == (1.0, "ready")
    finally:
        eng.unload()
