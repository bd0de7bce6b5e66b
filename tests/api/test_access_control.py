"""API keys, admin routes, rate limits, fair queues and CORS, on real
gunicorn + gevent servers with the tiny model."""
from __future__ import annotations

import os
import signal
import threading

import openai
import pytest
import requests

from src.core.fair_queue import FairQueue
from tests.conftest import start_server, stop_server
from tests.helpers import CHAT, auth, raw_post, wait_until

USER_KEYS = ["user-key-one", "user-key-two"]
FILE_KEY, ADMIN_KEY = "file-key-one", "admin-key-xyz"
ORIGIN = "https://app.example"
# the routes only the admin key may call (when one is set)
ADMIN_ROUTES = {("post", "/v1/models/load"), ("delete", "/v1/models/{model_id}/unload"),
                ("delete", "/v1/models/{model_id}"), ("get", "/v1/logs/recent"),
                ("delete", "/api/delete"), ("post", "/v1/models/pull"),
                ("delete", "/v1/models/pull/{model_id}")}


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.request.method, resp.url, resp.text)
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# team keys\n{FILE_KEY}\n")
    return path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, model_dir, tiny_model, keys_file):
    server = start_server(tmp_path_factory.mktemp("guarded"), {
        "DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(model_dir),
        "API_KEYS": ",".join(USER_KEYS), "API_KEYS_FILE": str(keys_file),
        "ADMIN_API_KEY": ADMIN_KEY, "CORS_ORIGINS": ORIGIN})
    yield server
    stop_server(server)


def operations(server) -> list[tuple[str, str, dict]]:
    """Every (method, path, operation) the server documents."""
    doc = requests.get(f"{server.url}/openapi.json", headers=auth(USER_KEYS[0]), timeout=10)
    assert doc.status_code == 200
    ops = [(m, p, op) for p, item in doc.json()["paths"].items() for m, op in item.items()]
    admin = {(m, p) for m, p, op in ops if op.get("x-admin-only")}
    assert admin == ADMIN_ROUTES
    return ops


def call(server, method: str, path: str, **kwargs) -> requests.Response:
    url = server.url + path.replace("{model_id}", "tiny-chat")
    body = CHAT if method == "post" else None
    return requests.request(method, url, json=body, timeout=60, **kwargs)


def test_every_route_the_spec_guards_needs_a_key(guarded):
    """The spec says which routes ask for a key (all but /health, `/` and the
    console's files, with API_KEYS set), and the server agrees."""
    ops = operations(guarded)
    assert len(ops) > 20
    open_paths = {p for _, p, op in ops if "security" not in op}
    assert open_paths == {"/health", "/", "/ui", "/ui/", "/ui/static/{filename}"}
    for method, path, op in ops:
        if "security" not in op:
            # open: liveness, and the console's files (the page asks for the key itself)
            path = path.replace("{filename}", "console.js")
            assert call(guarded, method, path).status_code in (200, 302), path
            continue
        assert op["security"] == [{"bearer": []}, {"api_key": []}]
        if path.startswith("/v1/messages"):  # the Anthropic face: its own error shape
            for headers in ({}, auth("wrong-key"), {"x-api-key": "wrong"}):
                resp = call(guarded, method, path, headers=headers)
                assert resp.status_code == 401 and resp.json()["type"] == "error"
                assert resp.json()["error"]["type"] == "authentication_error"
            continue
        if path.startswith("/api/"):  # the Ollama face: {"error": message}
            for headers in ({}, auth("wrong-key"), {"x-api-key": "wrong"}):
                resp = call(guarded, method, path, headers=headers)
                assert resp.status_code == 401 and set(resp.json()) == {"error"}
            continue
        error = assert_error(call(guarded, method, path), 401, "invalid_api_key")
        assert "didn't provide an API key" in error["message"]
        assert_error(call(guarded, method, path, headers=auth("wrong-key")), 401,
                     "invalid_api_key")
        assert_error(call(guarded, method, path, headers={"x-api-key": "wrong"}), 401,
                     "invalid_api_key")


def test_user_keys_cannot_manage_but_the_admin_key_can(guarded):
    for method, path in ADMIN_ROUTES:
        for key in USER_KEYS + [FILE_KEY]:
            resp = call(guarded, method, path, headers=auth(key))
            if path.startswith("/api/"):  # the Ollama face: {"error": message}
                assert resp.status_code == 403 and set(resp.json()) == {"error"}
                continue
            assert_error(resp, 403, "permission_denied")
    logs = requests.get(f"{guarded.url}/v1/logs/recent", headers=auth(ADMIN_KEY), timeout=10)
    assert logs.status_code == 200
    load = requests.post(f"{guarded.url}/v1/models/load", headers=auth(ADMIN_KEY), timeout=60,
                         json={"model_name": "tiny-chat"})
    assert load.status_code == 200 and load.json()["state"] == "ready"


def test_keys_work_from_every_source_and_with_the_sdk(guarded):
    for key in USER_KEYS + [FILE_KEY, ADMIN_KEY]:
        client = openai.OpenAI(base_url=guarded.base_url, api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="tiny-chat", messages=CHAT["messages"],
                                                max_tokens=2, temperature=0)
        assert answer.usage.completion_tokens == 2
    r = requests.post(f"{guarded.base_url}/chat/completions", json=CHAT, timeout=60,
                      headers={"x-api-key": USER_KEYS[1]})
    assert r.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.base_url, api_key="nope",
                      max_retries=0).models.list()


def test_keys_never_reach_the_logs(guarded):
    requests.post(f"{guarded.base_url}/chat/completions", json=CHAT, timeout=60,
                  headers=auth(USER_KEYS[0]))
    log_dir = guarded.log_path.parent / "logs"
    text = "".join(p.read_text(errors="replace") for p in log_dir.glob("*.log"))
    text += guarded.log()
    for key in USER_KEYS + [FILE_KEY, ADMIN_KEY, "wrong-key"]:
        assert key not in text
    assert '"key": "key:' in (log_dir / "api_requests.log").read_text()


def test_sighup_rereads_the_keys_file(guarded, keys_file):
    new_key = "file-key-two"
    keys_file.write_text(f"{new_key}\n")
    os.kill(guarded.process.pid, signal.SIGHUP)  # run.py exec'd the gunicorn master
    wait_until(lambda: requests.get(f"{guarded.base_url}/models", headers=auth(new_key),
                                    timeout=10).status_code == 200, 10,
               "the new key accepted after SIGHUP")
    assert_error(requests.get(f"{guarded.base_url}/models", headers=auth(FILE_KEY), timeout=10),
                 401, "invalid_api_key")
    # the worker was not restarted: the model stayed loaded, the inline keys still work
    assert requests.get(f"{guarded.base_url}/models", headers=auth(USER_KEYS[0]),
                        timeout=10).status_code == 200
    assert "Booting worker" not in guarded.log().split("SIGHUP")[-1]


def test_cors_only_for_the_configured_origin(guarded):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    ok = requests.options(f"{guarded.base_url}/chat/completions", timeout=10,
                          headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = requests.options(f"{guarded.base_url}/chat/completions", timeout=10,
                             headers={"Origin": "https://evil.example", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers
    answer = requests.post(f"{guarded.base_url}/chat/completions", json=CHAT, timeout=60,
                           headers={"Origin": ORIGIN, **auth(USER_KEYS[0])})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]


def test_system_status_reports_the_security_setup(guarded):
    status = requests.get(f"{guarded.base_url}/system/status", headers=auth(USER_KEYS[0]),
                          timeout=10).json()["security"]
    assert status["api_keys"] and status["admin_key"] and status["warning"] is None


# rate limits ---------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(tmp_path_factory, model_dir, tiny_model):
    server = start_server(tmp_path_factory.mktemp("limited"), {
        "DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(model_dir),
        "API_KEYS": "rpm-key,tpm-key,other-key", "RATE_LIMIT_RPM": str(RPM),
        "RATE_LIMIT_TPM": "1000"})
    yield server
    stop_server(server)


RPM = 8


def test_requests_per_minute_per_key(limited):
    remaining = []
    for _ in range(RPM):
        r = requests.get(f"{limited.base_url}/models", headers=auth("rpm-key"), timeout=10)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(RPM - 1, -1, -1))
    refused = requests.get(f"{limited.base_url}/models", headers=auth("rpm-key"), timeout=10)
    error = assert_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests" and int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    client = openai.OpenAI(base_url=limited.base_url, api_key="rpm-key", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    # another key has its own budget; /health is never limited
    assert requests.get(f"{limited.base_url}/models", headers=auth("other-key"),
                        timeout=10).status_code == 200
    assert requests.get(f"{limited.url}/health", timeout=10).status_code == 200


def test_tokens_per_minute_are_reserved_then_settled(limited):
    too_big = requests.post(f"{limited.base_url}/chat/completions", headers=auth("tpm-key"),
                            timeout=60, json={**CHAT, "max_tokens": 1200})
    assert "Request too large" in assert_error(too_big, 429, "rate_limit_exceeded")["message"]
    # the end token is made certain: the answer stops at once, and the unused
    # part of max_tokens goes back to the bucket
    eos = requests.post(f"{limited.url}/tokenize", headers=auth("tpm-key"), timeout=10,
                        json={"prompt": "<|im_end|>", "add_special_tokens": False}).json()
    short = {**CHAT, "max_tokens": 600, "logit_bias": {str(eos["tokens"][0]): 100}}
    for _ in range(3):  # 3 x 600 reserved > 1000: passes only if each one settled
        r = requests.post(f"{limited.base_url}/chat/completions", headers=auth("tpm-key"),
                          timeout=60, json=short)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 1
        # what this one used came off, the rest of its reservation went back (the bucket
        # also refills by 1000 a minute meanwhile)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) >= 900
    answers = [requests.post(f"{limited.base_url}/completions", headers=auth("tpm-key"),
                             timeout=60, json={"model": "tiny-chat", "prompt": "a",
                                               "max_tokens": 400, "ignore_eos": True})
               for _ in range(3)]  # 400 used each time: the third finds the bucket empty
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "tokens"


# fairness ------------------------------------------------------------------

def test_fair_queue_serves_clients_in_turn_and_keeps_a_share_for_newcomers():
    queue: FairQueue[str] = FairQueue(capacity=4)
    assert all(queue.put("a", f"a{i}") for i in range(4))
    assert not queue.put("a", "a4")  # full, and "a" holds all of it
    assert queue.put("b", "b0")  # a newcomer still gets its share
    assert queue.put("b", "b1") and not queue.put("b", "b2")  # share: 4 // 2 clients
    assert [queue.get() for _ in range(6)] == ["a0", "b0", "a1", "b1", "a2", "a3"]
    assert queue.get() is None and len(queue) == 0
    queue.put("c", "c0")
    queue.put("c", "c1")
    assert queue.remove(lambda item: item == "c0") and not queue.remove(lambda item: False)
    assert len(queue) == 1 and queue.get() == "c1"


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, model_dir, tiny_model):
    """One sequence at a time and four waiting: a queue that is easy to fill,
    with a model slow enough (SmolLM2, one thread) to keep it full."""
    server = start_server(tmp_path_factory.mktemp("narrow"), {
        "DEFAULT_MODEL": SLOW_MODEL, "MODEL_BASE_PATH": str(model_dir),
        "API_KEYS": "greedy-key,modest-key", "MAX_BATCH_SIZE": "1",
        "MAX_CONCURRENT_REQUESTS": "4"})
    yield server
    stop_server(server)


SLOW_MODEL = "SmolLM2-135M-Instruct"


def test_a_flooding_key_cannot_starve_another(narrow):
    long = {"model": SLOW_MODEL, "prompt": "once", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}  # longer than the test: the slot is freed when the test says
    greedy = auth("greedy-key")
    url = f"{narrow.base_url}/completions"

    def waiting() -> int:
        status = requests.get(f"{narrow.base_url}/models/{SLOW_MODEL}/status",
                              headers=greedy, timeout=10).json()
        return status["runtime"]["requests_waiting"]

    def wait_until_waiting(count: int) -> None:
        wait_until(lambda: waiting() >= count, 30, f"{count} requests waiting")
        assert waiting() == count

    running = requests.post(url, json=long, headers=greedy, stream=True, timeout=60)
    lines = running.iter_lines()  # kept: a dropped iterator closes the connection
    next(line for line in lines if line.startswith(b"data: "))
    # sockets, so that the test can hang up on them while they wait
    queued = [raw_post(narrow.url, "/v1/completions", long, greedy) for _ in range(4)]
    modest: list[requests.Response] = []
    asking = threading.Thread(target=lambda: modest.append(requests.post(
        url, headers=auth("modest-key"), timeout=30,  # behind a greedy one: minutes
        json={**long, "max_tokens": 8, "stream": False})))
    try:
        wait_until_waiting(4)
        # the queue is full, and the greedy key holds all of it
        assert_error(requests.post(url, json=long, headers=greedy, timeout=60), 503,
                     "service_unavailable")
        asking.start()  # the modest key still finds room
        wait_until_waiting(5)
        running.close()  # the slot is free: whose turn is it?
        asking.join()
        assert modest and modest[0].status_code == 200
        # served next, ahead of the greedy key's queue: at most one of those started
        assert waiting() >= 3
    finally:
        running.close()
        for sock in queued:
            sock.close()
