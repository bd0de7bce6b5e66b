"""The operator's side over HTTP on a real gunicorn + gevent server: loading
and unloading models at run time, status, metrics and logs."""
from __future__ import annotations

import json
import shutil
from typing import Iterator

import openai
import pytest
import requests

from tests.conftest import Server, json_lines, start_server, stop_server
from tests.helpers import metric_samples, wait_until


@pytest.fixture(scope="module")
def ops(tmp_path_factory, tiny_model) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ops")
    models = tmp / "models"
    models.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(tiny_model, models / f"tiny-{name}.gguf")
    (models / "broken.gguf").write_bytes(b"not a model at all" * 20)
    server = start_server(tmp, {"DEFAULT_MODEL": "tiny-a", "MODEL_BASE_PATH": str(models),
                                "MAX_CONCURRENT_MODELS": "2", "METRICS_INTERVAL": "1", "CONTEXT_SIZE": "256",
                                "CONFIG_DIR": str(tmp / "config")})
    server.logs = tmp / "logs"  # type: ignore[attr-defined]
    yield server
    stop_server(server)


def chat(server: Server, model: str, **kwargs):
    return server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5, **kwargs)


def log_lines(server: Server, name: str) -> list[dict]:
    return json_lines(server.logs / name)  # type: ignore[attr-defined]


def test_load_use_list_status_unload(ops):
    r = requests.post(f"{ops.base_url}/models/load", json={"model_name": "tiny-b"}, timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "ready"
    assert chat(ops, "tiny-b").choices[0].message.content is not None
    listed = {m.id: m for m in ops.client().models.list().data}
    assert listed["tiny-b"].state == "ready" and listed["tiny-c"].state == "unloaded"
    status = requests.get(f"{ops.base_url}/models/tiny-b/status", timeout=10).json()
    assert status["state"] == "ready" and status["runtime"]["context_length"] > 0
    r = requests.delete(f"{ops.base_url}/models/tiny-b/unload", timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert requests.get(f"{ops.base_url}/models/tiny-b/status").json()["state"] == "unloaded"

    r = requests.post(f"{ops.base_url}/models/load", timeout=60, json={
        "model_name": "mine", "model_path": "tiny-c.gguf", "engine_type": "llama_cpp",
        "context_size": 512})
    assert r.status_code == 200, r.text
    assert r.json()["runtime"]["context_length"] == 512
    assert chat(ops, "mine").usage.completion_tokens > 0
    r = requests.delete(f"{ops.base_url}/models/mine", timeout=60)
    assert r.status_code == 200 and r.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        chat(ops, "mine")
    assert requests.get(f"{ops.base_url}/models/mine/status").status_code == 404


def test_least_recently_used_model_makes_room(ops):
    chat(ops, "tiny-a")
    chat(ops, "tiny-b")  # loaded on demand: two resident now
    chat(ops, "tiny-b")
    chat(ops, "tiny-c")  # a third: tiny-a was used least recently
    states = {m.id: m.state for m in ops.client().models.list().data}
    assert states["tiny-a"] == "unloaded"
    assert states["tiny-b"] == states["tiny-c"] == "ready"
    assert requests.get(f"{ops.url}/health").status_code == 200


@pytest.mark.parametrize("body, status, code", [
    ({"model_name": "broken"}, 503, "model_load_failed"),
    ({"model_name": "x", "model_path": "../../../etc/passwd"}, 403, "model_path_forbidden"),
    ({"model_name": "x", "model_path": "/etc/passwd"}, 403, "model_path_forbidden"),
    ({"model_name": "x", "model_path": "nope.gguf"}, 404, "model_path_not_found"),
    ({"model_name": "x", "model_path": "tiny-a.gguf", "engine_type": "os.system"}, 400,
     "invalid_engine"),
    ({"model_name": "x", "model_path": "tiny-a.gguf", "contxt_size": 9}, 400, None),
    ({"model_path": "tiny-a.gguf"}, 400, None),
    ({"model_name": "never-heard-of"}, 404, "model_not_found"),
])
def test_bad_loads_get_clean_errors_and_the_server_goes_on(ops, body, status, code):
    r = requests.post(f"{ops.base_url}/models/load", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    assert chat(ops, "tiny-b").usage.completion_tokens > 0


def test_broken_model_shows_its_error(ops):
    requests.post(f"{ops.base_url}/models/load", json={"model_name": "broken"}, timeout=60)
    status = requests.get(f"{ops.base_url}/models/broken/status").json()
    assert status["state"] == "error" and "broken" in status["error"]
    assert any(e["level"] == "ERROR" for e in log_lines(ops, "errors.log"))


def test_unload_while_a_stream_runs_ends_it_cleanly(ops):
    # the real SmolLM2, with a context of its own: slow enough that the stream
    # is still running at the unload
    r = requests.post(f"{ops.base_url}/models/load", timeout=60, json={
        "model_name": "SmolLM2-135M-Instruct", "context_size": 2048})
    assert r.status_code == 200 and r.json()["runtime"]["context_length"] == 2048
    stream = requests.post(f"{ops.base_url}/chat/completions", stream=True, timeout=120, json={
        "model": "SmolLM2-135M-Instruct", "stream": True, "max_tokens": 2000,
        "ignore_eos": True, "messages": [{"role": "user", "content": "Tell a long story."}]})
    lines = stream.iter_lines()
    first = next(line for line in lines if line.startswith(b"data: "))
    assert b"chat.completion.chunk" in first
    r = requests.delete(f"{ops.base_url}/models/SmolLM2-135M-Instruct/unload",
                        params={"drain_timeout": "0.2"}, timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    rest = [line for line in lines if line.startswith(b"data: ")]
    assert rest[-1] == b"data: [DONE]"  # never a dropped connection
    error = json.loads(rest[-2][6:])
    assert error["error"]["code"] == "service_unavailable"
    # new requests for it load it again (AUTO_LOAD)
    assert chat(ops, "SmolLM2-135M-Instruct").usage.completion_tokens > 0


def _samples(url: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric_samples(url)}


def test_prometheus_metrics_parse_and_move(ops):
    before = _samples(f"{ops.url}/metrics")
    for _ in range(2):  # 5 tokens each: sampling cannot end one early
        chat(ops, "tiny-a", extra_body={"ignore_eos": True})
    after = _samples(f"{ops.url}/metrics")
    key = ("vllm_obtain_requests_total",
           (("endpoint", "chat"), ("model", "tiny-a"), ("status", "200")))
    assert after[key] - before.get(key, 0) == 2
    tokens = ("vllm_obtain_generation_tokens_total", (("model", "tiny-a"),))
    assert after[tokens] - before.get(tokens, 0) == 10
    ttft = ("vllm_obtain_time_to_first_token_seconds_count", (("model", "tiny-a"),))
    assert after[ttft] - before.get(ttft, 0) == 2
    assert after[("vllm_obtain_model_state", (("model", "tiny-a"), ("state", "ready")))] == 1
    assert ("vllm_obtain_model_load_seconds", (("model", "tiny-a"),)) in after


def test_system_routes(ops):
    status = requests.get(f"{ops.base_url}/system/status").json()
    assert status["version"] and status["engine"]["engine"] == "llama_cpp"
    assert status["platform"]["logical_cores"] >= 1
    assert any(m["id"] == "tiny-a" for m in status["models"])
    deep = requests.get(f"{ops.base_url}/system/health", timeout=60)
    assert deep.status_code == 200
    assert all(check["ok"] for check in deep.json()["models"].values())
    metrics = requests.get(f"{ops.base_url}/system/metrics").json()
    assert metrics["system"]["memory_total_bytes"] > 0
    assert metrics["inference"]["requests_total"] >= 1


def test_request_id_is_echoed_and_in_every_log_line(ops):
    rid = "ops-test-request-42"
    secret = "the prompt text stays out of the logs"
    r = requests.post(f"{ops.base_url}/chat/completions", headers={"X-Request-ID": rid},
                      json={"model": "tiny-a", "max_tokens": 3, "temperature": 0,
                            "messages": [{"role": "user", "content": secret}]}, timeout=60)
    assert r.headers["X-Request-ID"] == rid
    assert len(requests.get(f"{ops.url}/health").headers["X-Request-ID"]) == 32  # a fresh one
    line = wait_until(lambda: [e for e in log_lines(ops, "api_requests.log")
                               if e["request_id"] == rid], 5, "the request logged")[0]
    assert line["model"] == "tiny-a" and line["status"] == 200
    assert line["completion_tokens"] == 3 and line["route"] == "/v1/chat/completions"
    assert secret not in (ops.logs / "api_requests.log").read_text()
    assert any(e["request_id"] == rid for e in log_lines(ops, "app.log"))
    assert any("Loading tiny-a" in e["message"] for e in log_lines(ops, "model_operations.log"))
    wait_until((ops.logs / "system_metrics.log").exists, 5, "system_metrics.log written")
    sample = log_lines(ops, "system_metrics.log")[-1]
    assert sample["system"]["memory_total_bytes"] > 0


def test_recent_logs_route(ops):
    chat(ops, "tiny-a")
    recent = requests.get(f"{ops.base_url}/logs/recent", params={"limit": 3}).json()["data"]
    assert 1 <= len(recent) <= 3 and all("message" in e for e in recent)
    errors = requests.get(f"{ops.base_url}/logs/recent", params={"level": "error"}).json()
    assert all(e["level"] in ("ERROR", "CRITICAL") for e in errors["data"])
    assert requests.get(f"{ops.base_url}/logs/recent", params={"limit": "x"}).status_code == 400
    assert requests.get(f"{ops.base_url}/logs/recent",
                        params={"file": "../../etc/passwd"}).status_code == 400
