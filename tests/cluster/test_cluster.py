"""Load-balanced mode, end to end: a real entry point (Gunicorn + gevent)
starting real instances of this service on loopback, with the tiny model."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
import requests

from tests.conftest import json_lines, start_server, stop_server
from tests.helpers import CHAT, auth, metric_samples, raw_post, wait_until

ADMIN = "lb-admin-key"
USER = "lb-user-key"


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports, below the range the system hands
    out to outgoing connections: instances bind them again at every restart, and a
    client's connection must not take one in the meantime."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        first = random.randrange(10000, low - count)
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def cluster_env(model_dir: Path, **extra: str) -> dict[str, str]:
    return {"INFERENCE_MODE": "load_balance", "CLUSTER_BASE_PORT": str(free_ports(4)),
            "DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(model_dir),
            "CONTEXT_SIZE": "512", "MAX_CONCURRENT_MODELS": "2", "METRICS_INTERVAL": "0",
            **extra}


def status(server, key: str = ADMIN) -> dict[str, Any]:
    resp = requests.get(f"{server.url}/v1/cluster/status",
                        headers={"Authorization": f"Bearer {key}"}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def healthy(server, *ids: str) -> bool:
    instances = status(server)["instances"]
    return all(i in instances and instances[i]["healthy"] for i in ids)


def post(server, path: str, body: dict, key: str = ADMIN, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body,
                         headers={"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})},
                         timeout=60, **kwargs)


def served_by(server, count: int, key: str = USER) -> list[str]:
    """Which instance answered each of `count` chat requests sent one after another."""
    out = []
    for _ in range(count):
        resp = post(server, "/v1/chat/completions", CHAT, key)
        assert resp.status_code == 200, resp.text
        out.append(resp.headers["X-Instance"])
    return out


def instance_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port that refuses connections for the whole module: bound, never listening,
    so no server started meanwhile can get it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_dir, tiny_model, dead_port):
    """Two local instances, keys, and one configured upstream that never answers."""
    tmp = tmp_path_factory.mktemp("cluster")
    server = start_server(tmp, cluster_env(
        model_dir, CLUSTER_INSTANCES="2", MAX_INSTANCES="3", HEALTH_CHECK_INTERVAL="10",
        API_KEYS=USER, ADMIN_API_KEY=ADMIN,
        CLUSTER_UPSTREAMS=f"http://127.0.0.1:{dead_port}/v1 weight=5"))
    server.tmp = tmp
    wait_until(lambda: healthy(server, "instance_0", "instance_1"), 90, "both instances healthy")
    yield server
    pids = set()
    for inst in status(server)["instances"].values():
        if inst["pid"]:
            pids |= instance_pids(inst["pid"])
    stop_server(server)
    # graceful shutdown stops every instance with the entry point
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                             for p in pids), 40, "instances gone after the entry point stopped")


def test_the_openai_sdk_is_served_through_the_entry_point(cluster):
    client = cluster.client(api_key=USER)
    reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(**CHAT, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    models = client.models.list().data
    tiny = next(m for m in models if m.id == "tiny-chat")
    assert sorted(tiny.model_extra["instances"]) == ["instance_0", "instance_1"]
    assert client.models.retrieve("tiny-chat").id == "tiny-chat"
    embedding = client.embeddings.create(model="tiny-chat", input="hello")
    assert len(embedding.data[0].embedding) > 0


def test_request_id_is_carried_to_the_instance(cluster):
    resp = post(cluster, "/v1/chat/completions", CHAT, USER,
                headers={"X-Request-ID": "lb-trace-0001"})
    assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "lb-trace-0001"
    log = cluster.tmp / "logs" / resp.headers["X-Instance"] / "api_requests.log"
    assert any(e["request_id"] == "lb-trace-0001" and e["status"] == 200
               for e in json_lines(log))


def test_keys_are_checked_and_cluster_routes_need_the_admin_key(cluster):
    assert post(cluster, "/v1/chat/completions", CHAT, "wrong").status_code == 401
    assert requests.post(f"{cluster.url}/v1/chat/completions", json=CHAT).status_code == 401
    denied = requests.get(f"{cluster.url}/v1/cluster/status",
                          headers={"Authorization": f"Bearer {USER}"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    for path, body in (("/v1/cluster/scale", {"action": "scale_up"}),
                       ("/v1/cluster/strategy", {"strategy": "random"}),
                       ("/v1/cluster/restart", {"instance_id": "instance_0"})):
        assert post(cluster, path, body, USER).status_code == 403
    assert requests.get(f"{cluster.url}/health").status_code == 200  # open, like the instances'
    doc = requests.get(f"{cluster.url}/openapi.json",
                       headers={"Authorization": f"Bearer {USER}"}).json()
    scale = doc["paths"]["/v1/cluster/scale"]["post"]
    assert scale["x-admin-only"] and "requestBody" in scale
    assert "requestBody" in doc["paths"]["/v1/chat/completions"]["post"]


def test_status_reports_every_instance(cluster, dead_port):
    body = status(cluster)
    assert body["is_running"] and body["total_instances"] == 3
    assert body["running_instances"] == 2 and body["load_balancer_strategy"] == "round_robin"
    local = body["instances"]["instance_0"]
    assert local["kind"] == "local" and local["pid"] and local["port"]
    assert local["memory_mb"] > 10 and "cpu_percent" in local and local["weight"] == 1
    assert "tiny-chat" in local["models"]
    dead = body["instances"]["upstream_0"]
    assert dead["kind"] == "remote" and not dead["healthy"] and dead["pid"] is None
    assert dead["url"] == f"http://127.0.0.1:{dead_port}" and dead["weight"] == 5
    metrics = requests.get(f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {USER}"})
    assert 'vllm_obtain_instance_healthy{instance="instance_0"} 1.0' in metrics.text
    assert 'vllm_obtain_instance_healthy{instance="upstream_0"} 0.0' in metrics.text


def test_system_metrics_add_up_the_instances_figures(cluster):
    def figures() -> dict[str, Any]:  # once both instances answered in time (not the dead one)
        def read() -> dict[str, Any]:
            return requests.get(f"{cluster.url}/v1/system/metrics", timeout=10,
                                headers={"Authorization": f"Bearer {USER}"}).json()["inference"]
        return wait_until(lambda: (lambda f: sorted(f["instances_reporting"]) ==
                                 ["instance_0", "instance_1"] and f)(read()),
                        30, "both instances report")

    before = figures()
    tokens = sum(post(cluster, "/v1/chat/completions", CHAT, USER).json()["usage"]
                 ["completion_tokens"] for _ in range(4))
    after = figures()  # round robin: both instances' counters moved, the sum by all of it
    assert after["completed_requests"] - before["completed_requests"] == 4
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == tokens
    assert after["ttft_count"] - before["ttft_count"] == 4 and after["latency_seconds_sum"] > 0


def test_round_robin_alternates_and_skips_the_dead_upstream(cluster):
    order = served_by(cluster, 40)
    assert Counter(order) == {"instance_0": 20, "instance_1": 20}
    assert all(a != b for a, b in zip(order, order[1:]))


def test_strategies_distribute_as_they_promise(cluster):
    def use(strategy: str) -> None:
        resp = post(cluster, "/v1/cluster/strategy", {"strategy": strategy})
        assert resp.status_code == 200 and resp.json()["strategy"] == strategy

    try:
        use("weighted")  # equal weights: an even share
        assert Counter(served_by(cluster, 40)) == {"instance_0": 20, "instance_1": 20}
        use("random")
        counts = Counter(served_by(cluster, 40))
        assert set(counts) == {"instance_0", "instance_1"} and sum(counts.values()) == 40
        use("response_time")  # each request to the lowest moving average of the time
        for _ in range(10):
            figures = status(cluster)["instances"]
            times = {i: figures[i]["avg_response_time"] for i in ("instance_0", "instance_1")}
            fastest = {i for i, t in times.items() if t == min(times.values())}
            assert served_by(cluster, 1)[0] in fastest
        use("least_connections")  # one instance busy with a long stream: the other serves
        long = dict(CHAT, max_tokens=400, stream=True, ignore_eos=True,
                    model="SmolLM2-135M-Instruct")
        with post(cluster, "/v1/chat/completions", long, USER, stream=True) as busy:
            busy_at = busy.headers["X-Instance"]
            lines = busy.iter_lines()
            next(lines)
            others = served_by(cluster, 8)
            assert busy_at not in others and len(set(others)) == 1
        bad = post(cluster, "/v1/cluster/strategy", {"strategy": "fastest"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "strategy"
    finally:
        use("round_robin")


def test_killing_an_instance_under_load_loses_no_request(cluster):
    victim = status(cluster)["instances"]["instance_0"]
    body = dict(CHAT, max_tokens=48, ignore_eos=True)
    killed = threading.Event()
    killed_at, respawned_after = [0.0], []

    def one(i: int) -> int:
        if i == 10:
            os.kill(victim["pid"], signal.SIGKILL)
            killed.set()
        return post(cluster, "/v1/chat/completions", body, USER).status_code

    def watch() -> None:  # when does the supervisor start a new process?
        killed.wait()
        at = killed_at[0] = time.monotonic()
        wait_until(lambda: status(cluster)["instances"]["instance_0"]["pid"] not in
                 (None, victim["pid"]), 60, "instance_0 respawned")
        respawned_after.append(time.monotonic() - at)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(30)))
    assert results == [200] * 30  # none lost
    watcher.join()
    # the supervisor starts it again within the health interval (10 s here); how long the
    # new process takes to boot and load is the machine's, so it is only printed
    assert respawned_after and respawned_after[0] < 10
    back = wait_until(lambda: (lambda i: i["healthy"] and i["pid"] != victim["pid"] and i)(
        status(cluster)["instances"]["instance_0"]), 60, "instance_0 healthy again")
    print(f"\ninstance_0 respawned {respawned_after[0]:.1f} s after SIGKILL, healthy again "
          f"after {time.monotonic() - killed_at[0]:.1f} s (restarts {back['restarts']})")
    assert back["restarts"] >= 1 and back["failures"] >= 1


def test_a_hung_instance_fails_its_checks_and_is_restarted(cluster):
    """Alive but answering nothing (SIGSTOP): 3 failed checks take it out and
    restart it; the request that was waiting there is answered by the other."""
    hung = status(cluster)["instances"]["instance_1"]
    os.killpg(hung["pid"], signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as pool:  # round robin: one of the two lands there
            answers = list(pool.map(lambda _: post(cluster, "/v1/chat/completions", CHAT, USER),
                                    range(2)))
        assert [a.status_code for a in answers] == [200, 200]
        back = wait_until(lambda: (lambda i: i["healthy"] and i["pid"] != hung["pid"] and i)(
            status(cluster)["instances"]["instance_1"]), 60, "instance_1 restarted")
        assert back["restarts"] >= 1 and back["failures"] >= 3
    finally:
        try:
            os.killpg(hung["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    log = (cluster.tmp / "logs" / "cluster.log").read_text()
    assert "instance_1 unhealthy" in log and "3 failed health checks" in log


def test_a_stream_cut_by_a_dying_instance_ends_with_an_error_event(cluster):
    long = dict(CHAT, max_tokens=400, stream=True, ignore_eos=True,
                model="SmolLM2-135M-Instruct")
    with post(cluster, "/v1/chat/completions", long, USER, stream=True) as resp:
        assert resp.status_code == 200
        name = resp.headers["X-Instance"]
        lines = resp.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        os.kill(status(cluster)["instances"][name]["pid"], signal.SIGKILL)
        rest = [line.decode() for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][6:])["error"]
    # the proxy saw the connection drop (upstream_error), or the instance's worker saw its
    # master die first and ended the stream itself as it unloaded (service_unavailable)
    assert error["type"] == "server_error"
    assert error["code"] in ("upstream_error", "service_unavailable")
    wait_until(lambda: healthy(cluster, name), 90, f"{name} restarted")


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_ends_the_work_at_the_instance(cluster, stream):
    from src.utils.metrics import PREFIX

    # a local instance killed by an earlier test is back first: every one is asked below
    wait_until(lambda: all(i["healthy"] for i in status(cluster)["instances"].values()
                         if i["pid"]), 90, "every local instance healthy")
    instances = [i for i in status(cluster)["instances"].values() if i["pid"]]

    def get(inst: dict[str, Any], path: str) -> requests.Response:
        return requests.get(f"{inst['url']}{path}", timeout=5,
                            headers={"Authorization": f"Bearer {USER}"})

    def running() -> int:
        return sum(get(i, "/v1/system/metrics").json()["inference"]["requests_running"]
                   for i in instances)

    def hang_ups() -> int:  # requests the instances ended because their client left
        return sum(int(sample.value) for i in instances
                   for sample in metric_samples(f"{i['url']}/metrics",
                                                Authorization=f"Bearer {USER}")
                   if sample.name == f"{PREFIX}_requests_total"
                   and sample.labels.get("status") == "499")

    before = hang_ups()
    long = dict(CHAT, max_tokens=400, stream=stream, ignore_eos=True,
                model="SmolLM2-135M-Instruct")
    sock = raw_post(cluster.url, "/v1/chat/completions", long, auth(USER))
    if stream:
        got = b""
        while b"data: " not in got:
            got += sock.recv(4096)
    else:
        wait_until(lambda: running() == 1, 30, "the instance generating")
    sock.close()
    wait_until(lambda: running() == 0, 10, "the instance stopped generating")
    # not a request that ran to its end: the instance counted a departed client

    wait_until(lambda: hang_ups() == before + 1, 10, "the instance ended the request")
    wait_until(lambda: all(i["active_connections"] == 0
                         for i in status(cluster)["instances"].values()),
             5, "the entry point released the instance")


def test_scaling_up_and_down(cluster):
    resp = post(cluster, "/v1/cluster/scale", {"action": "scale_up", "count": 1})
    assert resp.status_code == 200 and resp.json()["target_instances"] == 3
    wait_until(lambda: healthy(cluster, "instance_2"), 90, "instance_2 healthy")
    assert set(served_by(cluster, 6)) == {"instance_0", "instance_1", "instance_2"}
    too_many = post(cluster, "/v1/cluster/scale", {"action": "scale_up", "count": 1})
    assert too_many.status_code == 400 and "MAX_INSTANCES" in too_many.json()["error"]["message"]
    pid = status(cluster)["instances"]["instance_2"]["pid"]
    resp = post(cluster, "/v1/cluster/scale", {"action": "scale_down", "count": 1})
    assert resp.status_code == 200 and resp.json()["target_instances"] == 2
    wait_until(lambda: "instance_2" not in status(cluster)["instances"], 90, "instance_2 removed")
    wait_until(lambda: not instance_pids(pid), 10, "instance_2's processes gone")
    assert set(served_by(cluster, 4)) == {"instance_0", "instance_1"}
    too_few = post(cluster, "/v1/cluster/scale", {"action": "scale_down", "count": 2})
    assert too_few.status_code == 400 and "MIN_INSTANCES" in too_few.json()["error"]["message"]


def test_restarting_an_instance(cluster):
    before = status(cluster)["instances"]["instance_1"]
    resp = post(cluster, "/v1/cluster/restart", {"instance_id": "instance_1"})
    assert resp.status_code == 200
    wait_until(lambda: (lambda i: i["healthy"] and i["pid"] != before["pid"])(
        status(cluster)["instances"]["instance_1"]), 90, "instance_1 restarted")
    assert post(cluster, "/v1/cluster/restart", {"instance_id": "nope"}).status_code == 404
    remote = post(cluster, "/v1/cluster/restart", {"instance_id": "upstream_0"})
    assert remote.status_code == 400 and "never restarted" in remote.json()["error"]["message"]


def test_models_loaded_through_the_entry_point_reach_every_instance(cluster, model_dir):
    resp = post(cluster, "/v1/models/load", {"model_name": "tiny-base"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["instances"] == {"instance_0": 200, "instance_1": 200}
    models = requests.get(f"{cluster.url}/v1/models",
                          headers={"Authorization": f"Bearer {USER}"}).json()["data"]
    base = next(m for m in models if m["id"] == "tiny-base")
    assert base["state"] == "ready" and sorted(base["instances"]) == ["instance_0", "instance_1"]
    user = post(cluster, "/v1/models/load", {"model_name": "tiny-base"}, USER)
    assert user.status_code == 403
    gone = requests.delete(f"{cluster.url}/v1/models/tiny-base/unload",
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert gone.status_code == 200 and set(gone.json()["instances"].values()) == {200}


def test_a_remote_upstream_joins_takes_its_weight_and_leaves(cluster, tmp_path, model_dir):
    remote_models = tmp_path / "remote-models"  # a model only the upstream serves
    remote_models.mkdir()
    for name in ("tiny-chat", "remote-only"):
        (remote_models / f"{name}.gguf").write_bytes((model_dir / "tiny-chat.gguf").read_bytes())
    remote = start_server(tmp_path, {"DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH":
                                     str(remote_models), "CONTEXT_SIZE": "512",
                                     "API_KEYS": "remote-key"})
    try:
        resp = post(cluster, "/v1/cluster/upstreams",
                    {"url": f"{remote.url}/v1", "weight": 3, "api_key": "remote-key"})
        assert resp.status_code == 201
        joined = resp.json()["id"]
        wait_until(lambda: healthy(cluster, joined), 30, "the upstream joins")
        post(cluster, "/v1/cluster/strategy", {"strategy": "weighted"})
        counts = Counter(served_by(cluster, 40))
        assert counts == {joined: 24, "instance_0": 8, "instance_1": 8}
        only_there = [post(cluster, "/v1/chat/completions", dict(CHAT, model="remote-only"),
                           USER) for _ in range(5)]
        assert {(r.status_code, r.headers["X-Instance"]) for r in only_there} == {(200, joined)}
    finally:
        post(cluster, "/v1/cluster/strategy", {"strategy": "round_robin"})
        stop_server(remote)
    # gone without notice: skipped, and nothing is lost
    assert set(served_by(cluster, 6)) <= {"instance_0", "instance_1"}
    assert not status(cluster)["instances"][joined]["healthy"]
    left = requests.delete(f"{cluster.url}/v1/cluster/upstreams/{joined}",
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert left.status_code == 200 and joined not in status(cluster)["instances"]
    bad = post(cluster, "/v1/cluster/upstreams", {"url": "ftp://somewhere"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "url"


def test_auto_scaling_follows_the_queue(tmp_path, model_dir, tiny_model):
    server = start_server(tmp_path, cluster_env(
        model_dir, CLUSTER_INSTANCES="1", MIN_INSTANCES="1", MAX_INSTANCES="2",
        AUTO_SCALING="true", SCALE_UP_QUEUE_DEPTH="1", SCALE_COOLDOWN="0",
        SCALE_DOWN_AFTER="2", MAX_BATCH_SIZE="1", HEALTH_CHECK_INTERVAL="5"))
    try:
        wait_until(lambda: healthy(server, "instance_0"), 90, "instance_0 healthy")
        body = dict(CHAT, max_tokens=300, ignore_eos=True, model="SmolLM2-135M-Instruct")
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)

        threads = [threading.Thread(target=flood) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: status(server)["target_local_instances"] == 2, 60, "scaled up")
            wait_until(lambda: healthy(server, "instance_1"), 90, "instance_1 healthy")
        finally:
            stop.set()
            for t in threads:
                t.join()
        wait_until(lambda: status(server)["target_local_instances"] == 1, 60, "scaled down")
        wait_until(lambda: "instance_1" not in status(server)["instances"], 90, "instance_1 gone")
    finally:
        stop_server(server)


def test_an_instance_that_cannot_start_backs_off_and_requests_get_a_clean_503(
        tmp_path, model_dir, tiny_model):
    env = cluster_env(model_dir, CLUSTER_INSTANCES="1", HEALTH_CHECK_INTERVAL="5")
    squatter = socket.socket()  # another program holds the instance's port
    squatter.bind(("127.0.0.1", int(env["CLUSTER_BASE_PORT"])))
    squatter.listen(1)
    server = start_server(tmp_path, env, require_model=False)
    try:
        log = tmp_path / "logs" / "cluster.log"
        wait_until(lambda: log.exists() and "next start in" in log.read_text(), 60,
                 "the crash loop backs off")
        resp = requests.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30)
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        assert resp.json()["error"]["code"] == "service_unavailable"
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 503
        inst = status(server)["instances"]["instance_0"]
        assert not inst["healthy"] and "exited" in inst["last_error"]
        squatter.close()  # the port is free again: the instance comes up on its own
        wait_until(lambda: healthy(server, "instance_0"), 90, "instance_0 starts once it can")
        assert requests.post(f"{server.url}/v1/chat/completions", json=CHAT,
                             timeout=30).status_code == 200
    finally:
        squatter.close()
        stop_server(server)
