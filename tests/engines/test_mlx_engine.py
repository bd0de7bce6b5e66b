"""The MLX engine driven directly (no server) on the tiny random Llama folder:
what batching must not change, and the one-at-a-time path for models whose
caches cannot be batched. The served behaviour is in test_engine_behaviour."""
from __future__ import annotations

import threading

import pytest

from src.core.inference_engine import EngineOptions, GenerationRequest, SamplingParams

pytest.importorskip("mlx_lm")

from src.engines.mlx_engine import MLXEngine  # noqa: E402
from tests.helpers import wait_until


class OneAtATime(MLXEngine):
    """The engine as it serves a model whose KV caches mlx-lm cannot merge."""

    def _open(self) -> None:
        super()._open()
        self._batchable, self.parallel_sequences = False, 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.tiny_hf_model import write_tiny_hf_model

    return write_tiny_hf_model(tmp_path_factory.mktemp("mlx") / "tiny")


@pytest.fixture(scope="module", params=[MLXEngine, OneAtATime], ids=["batched", "one-at-a-time"])
def engine(request, folder):
    eng = request.param("tiny", EngineOptions(context_size=1024, parallel_sequences=4))
    eng.load(str(folder))
    yield eng
    eng.unload()


def run(engine, prompt: str, rid: str, **kwargs):
    sampling = kwargs.pop("sampling", SamplingParams(temperature=0))
    stream = engine.submit(GenerationRequest(rid, engine.tokenize(prompt), sampling=sampling,
                                             **kwargs))
    deltas = list(stream.iter_deltas())
    return "".join(d.text for d in deltas), deltas[-1]


def run_together(engine, jobs: dict[str, dict]) -> dict[str, str]:
    texts: dict[str, str] = {}

    def one(rid: str) -> None:
        texts[rid] = run(engine, rid=rid, **jobs[rid])[0]

    threads = [threading.Thread(target=one, args=(rid,)) for rid in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return texts


def test_both_paths_answer_alike(engine, folder):
    """Greedy text, max_tokens, stop strings and usage: the same whichever way
    the engine runs (the batched engine is the reference)."""
    reference = MLXEngine("reference", EngineOptions(context_size=1024))
    reference.load(str(folder))
    try:
        expected = run(reference, "once upon a time", "ref", max_tokens=24)[0]
    finally:
        reference.unload()
    text, last = run(engine, "once upon a time", "a", max_tokens=24)
    assert text == expected
    assert last.finish_reason == "length" and last.usage.completion_tokens == 24
    cut = expected[5:8]
    stopped, last = run(engine, "once upon a time", "b", max_tokens=24, stop=[cut])
    assert stopped == expected[:expected.index(cut)] and last.finish_reason == "stop"
    assert last.stop_sequence == cut


def test_a_seeded_request_draws_the_same_in_any_company(engine):
    """A seed gives the request its own random key: what it samples does not
    depend on the requests that share its batch."""
    seeded = dict(prompt="hello there", max_tokens=16,
                  sampling=SamplingParams(temperature=1.0, top_p=0.95, seed=7))
    alone = run(engine, rid="alone", **seeded)[0]
    noisy = SamplingParams(temperature=1.5)
    company = run_together(engine, {"seeded": seeded, **{
        f"other{i}": dict(prompt=f"noise {i}", max_tokens=16, sampling=noisy) for i in range(3)}})
    assert company["seeded"] == alone


def test_an_abort_frees_the_batch_at_once(engine):
    stream = engine.submit(GenerationRequest("long", engine.tokenize("a long story"),
                                             max_tokens=900, ignore_eos=True))
    assert stream.poll(30)  # it is generating
    stream.close()
    wait_until(lambda: not engine.status().requests_running, 10,
               "the aborted request stopped", interval=0.01)
    text, last = run(engine, "after", "next", max_tokens=5)
    assert last.usage.completion_tokens == 5
