"""Cancellation, back-pressure and time limits on a real server (SmolLM2, one
sequence at a time, one waiting at most). The time-limit tests get a server of
their own with a 3 s REQUEST_TIMEOUT; on the other one no request ends by
itself while a test looks at it, however slow the machine."""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import start_server, stop_server
from tests.helpers import raw_post, wait_until

MODEL = "SmolLM2-135M-Instruct"
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True}


def one_at_a_time_server(directory, request_timeout: str):
    return start_server(directory, {
        "DEFAULT_MODEL": MODEL, "MAX_BATCH_SIZE": "1", "MAX_CONCURRENT_REQUESTS": "1",
        "REQUEST_TIMEOUT": request_timeout})


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory):
    server = one_at_a_time_server(tmp_path_factory.mktemp("limits"), "600")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory):
    server = one_at_a_time_server(tmp_path_factory.mktemp("timeout"), "3")
    yield server
    stop_server(server)


def running(server) -> tuple[int, int]:
    status = requests.get(f"{server.base_url}/models/{MODEL}/status", timeout=5).json()
    runtime = status["runtime"]
    return runtime["requests_running"], runtime["requests_waiting"]


def wait_idle(server, limit: float = 10.0) -> None:
    wait_until(lambda: running(server) == (0, 0), limit, "the request aborted")


def wait_running(server, expected: tuple[int, int], limit: float = 10.0) -> None:
    wait_until(lambda: running(server) == expected, limit, f"running, waiting = {expected}")


def post_completion(server, body: dict) -> socket.socket:
    return raw_post(server.url, "/v1/completions", body)


def test_stream_disconnect_aborts_and_frees_the_slot(limits_server):
    resp = requests.post(f"{limits_server.base_url}/completions", json={**LONG, "stream": True},
                         stream=True, timeout=30)
    lines = resp.iter_lines()
    for _ in range(6):
        next(lines)
    assert running(limits_server)[0] == 1
    resp.close()
    wait_idle(limits_server)
    # the only slot is free again: the next request is served at once
    answer = requests.post(f"{limits_server.base_url}/completions", timeout=30,
                           json={**LONG, "max_tokens": 3}).json()
    assert answer["usage"]["completion_tokens"] == 3


def test_non_streaming_disconnect_aborts(limits_server):
    sock = post_completion(limits_server, LONG)
    wait_running(limits_server, (1, 0))
    sock.close()
    wait_idle(limits_server)


def test_full_queue_answers_503_with_retry_after(limits_server):
    first = post_completion(limits_server, LONG)  # runs
    try:
        wait_running(limits_server, (1, 0))
        second = post_completion(limits_server, LONG)  # waits
        try:
            wait_running(limits_server, (1, 1))
            third = requests.post(f"{limits_server.base_url}/completions", json=LONG, timeout=10)
            assert third.status_code == 503
            assert int(third.headers["Retry-After"]) >= 1
            assert third.json()["error"]["type"] == "server_error"
        finally:
            second.close()
    finally:
        first.close()
    wait_idle(limits_server)


def test_timeout_ends_a_stream_with_an_error_event(timeout_server):
    started = time.monotonic()
    resp = requests.post(f"{timeout_server.base_url}/completions", json={**LONG, "stream": True},
                         stream=True, timeout=30)
    events = [line.decode() for line in resp.iter_lines() if line]
    assert time.monotonic() - started < 20  # 3000 tokens would take far longer
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: "):])["error"]
    assert error["code"] == "timeout" and "REQUEST_TIMEOUT" in error["message"]
    wait_idle(timeout_server)


def test_timeout_non_streaming_is_504(timeout_server):
    resp = requests.post(f"{timeout_server.base_url}/completions", json=LONG, timeout=30)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    wait_idle(timeout_server)


def test_health_and_status_answer_under_full_load(limits_server):
    sockets = []
    try:
        # one after the other: sent together, the second may find the first
        # still waiting, and one may wait at most
        for expected in ((1, 0), (1, 1)):
            sockets.append(post_completion(limits_server, LONG))
            wait_running(limits_server, expected)
        for _ in range(5):
            # the engine's slot and the queue are full; the control routes still answer
            assert requests.get(f"{limits_server.url}/health", timeout=5).status_code == 200
            assert running(limits_server) == (1, 1)
    finally:
        for s in sockets:
            s.close()
    wait_idle(limits_server)
