"""Pulling models over real HTTP from a local hub (tests/fake_hub.py) into
a real server's MODEL_BASE_PATH: Hugging Face and ModelScope layouts and a
plain URL, progress as a stream and in the model's status, a dropped line
that resumes, a cancel and a resume, a corrupt file, a quota, path escapes;
the model read from its files, and MODEL_BASE_PATH rescanned."""
from __future__ import annotations

import json
import struct
import threading

import pytest
import requests

from tests.conftest import start_server, stop_server
from tests.fake_hub import FakeHub
from tests.helpers import wait_until
from tests.tiny_model import write_tiny_model

ADMIN, USER = "pull-admin-key", "pull-user-key"
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
USER_H = {"Authorization": f"Bearer {USER}"}


def safetensors(shapes: dict[str, list[int]]) -> bytes:
    """A real safetensors file: its JSON header, then the f32 tensors' zero bytes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("hub-files")
    write_tiny_model(folder / "a.gguf")
    write_tiny_model(folder / "b.gguf", seed=7)
    write_tiny_model(folder / "base.gguf", chat_template=False, seed=11)
    return {name: (folder / f"{name}.gguf").read_bytes() for name in ("a", "b", "base")}


@pytest.fixture(scope="module")
def hub(files):
    big = b"\0" * (9 << 20)  # more than the quota
    hub = FakeHub(repos={
        "org/tiny-GGUF": {"tiny-Q4_K_M.gguf": files["a"], "tiny-Q8_0.gguf": files["b"],
                          "README.md": b"# tiny"},
        "org/slow-GGUF": {"slow.gguf": files["a"]},
        "org/shared-GGUF": {"shared.gguf": files["b"]},
        "org/cut-GGUF": {"cut.gguf": files["b"]},
        "org/bad-GGUF": {"bad.gguf": files["a"]},
        "org/big-GGUF": {"big.gguf": big},
        "org/many-GGUF": {"m-Q5_K_S.gguf": b"GGUF", "m-Q6_K.gguf": b"GGUF"},
        "org/escape": {"config.json": b"{}", "../../escaped.json": b"{}"},
        "org/tiny-folder": {
            "config.json": json.dumps({"architectures": ["LlamaForCausalLM"],
                                       "model_type": "llama", "hidden_size": 8,
                                       "max_position_embeddings": 2048}).encode(),
            "tokenizer_config.json": json.dumps(
                {"chat_template": "{% for m in messages %}<think>{{ m.content }}"
                                  "{% endfor %}{% if tools %}{{ tools }}{% endif %}"}).encode(),
            "model.safetensors": safetensors({"embed": [16, 8], "head": [8, 16]}),
            "pytorch_model.bin": b"skipped when safetensors are there"},
    }, plain={"url-model.gguf": files["base"]}).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub, model_dir):
    tmp = tmp_path_factory.mktemp("pull-server")
    models = tmp / "models"
    models.mkdir()
    (models / "tiny-chat.gguf").write_bytes((model_dir / "tiny-chat.gguf").read_bytes())
    srv = start_server(tmp, {"DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(models),
                             "CONTEXT_SIZE": "256", "MAX_CONCURRENT_MODELS": "3",
                             "ALLOW_MODEL_DOWNLOADS": "true", "HF_ENDPOINT": hub.url,
                             "MODELSCOPE_ENDPOINT": hub.url, "MODEL_STORAGE_LIMIT": "8MB",
                             "HF_TOKEN": "hub-token",
                             "API_KEYS": USER, "ADMIN_API_KEY": ADMIN})
    srv.models = models
    yield srv
    stop_server(srv)


def pull(server, **body) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/pull", json=body, headers=ADMIN_H, timeout=60)


def events(server, **body) -> list[dict]:
    """The pull's progress events, as they stream."""
    with requests.post(f"{server.url}/v1/models/pull", json={**body, "stream": True},
                       headers=ADMIN_H, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True)
                 if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def wait_pull(server, model_id: str, until, timeout: float = 30.0) -> dict:
    def snapshot():
        snap = requests.get(f"{server.url}/v1/models/pull/{model_id}", headers=USER_H,
                            timeout=10).json()
        return until(snap) and snap

    return wait_until(snapshot, timeout, f"the pull of {model_id}")


def test_downloads_are_off_unless_allowed(tiny_server):
    r = requests.post(f"{tiny_server.url}/v1/models/pull", json={"repo": "org/tiny-GGUF"},
                      timeout=10)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "downloads_disabled"
    assert "ALLOW_MODEL_DOWNLOADS" in r.json()["error"]["message"]


def test_pull_a_gguf_by_quantization_then_chat_with_it(server, hub, files):
    progress = events(server, repo="org/tiny-GGUF", quantization="q8_0")
    assert progress[-1]["status"] == "success", progress[-1]
    assert progress[-1]["percent"] == 100.0
    assert progress[-1]["total"] == progress[-1]["completed"] == len(files["b"])
    pulled = server.models / "tiny-Q8_0.gguf"
    assert pulled.read_bytes() == files["b"]
    assert not list((server.models / ".pulls").rglob("*.part"))
    # the hub's commit pins every file
    assert any("/resolve/0123456789abcdef" in path for _, path, _ in hub.requests)

    info = requests.get(f"{server.url}/v1/models/tiny-Q8_0", headers=USER_H, timeout=10).json()
    meta = info["metadata"]
    assert meta["architecture"] == "llama" and meta["format"] == "gguf"
    assert meta["parameters"] > 10_000 and meta["parameter_size"].endswith("K")
    assert meta["quantization"] == "ALL_F32" and meta["chat_template"] is True
    assert meta["context_length"] > 0 and meta["embedding_length"] == 64
    assert "chat" in meta["capabilities"]

    reply = server.client(api_key=USER).chat.completions.create(
        model="tiny-Q8_0", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0


def test_pulling_a_second_time_is_a_conflict_and_bad_requests_are_400(server):
    events(server, repo="org/tiny-GGUF", quantization="Q4_K_M")
    again = pull(server, repo="org/tiny-GGUF", quantization="Q4_K_M")
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_exists"
    several = pull(server, repo="org/many-GGUF")  # two .gguf files, neither of them Q4_K_M
    assert several.status_code == 400
    assert "m-Q5_K_S.gguf, m-Q6_K.gguf" in several.json()["error"]["message"]
    missing = pull(server, repo="org/no-such-repo")
    assert missing.status_code == 404 and "no repository" in missing.json()["error"]["message"]
    no_file = pull(server, repo="org/tiny-GGUF", file="nope.gguf")
    assert no_file.status_code == 404 and "tiny-Q8_0.gguf" in no_file.json()["error"]["message"]
    both = pull(server, repo="org/tiny-GGUF", url="http://x/y.gguf")
    assert both.status_code == 400
    user = requests.post(f"{server.url}/v1/models/pull", json={"repo": "org/tiny-GGUF"},
                         headers=USER_H, timeout=10)
    assert user.status_code == 403


def test_hf_token_goes_to_the_hub_and_a_refusal_says_so(server, hub, files):
    hub.token = "hub-token"  # the hub now wants HF_TOKEN, for the listing and the file
    try:
        final = events(server, repo="org/tiny-GGUF", file="tiny-Q8_0.gguf", name="gated")[-1]
        assert final["status"] == "success", final
        hub.token = "another-token"
        refused = pull(server, repo="org/tiny-GGUF", name="gated-2")
    finally:
        hub.token = None
    assert (server.models / "gated.gguf").read_bytes() == files["b"]
    assert refused.status_code == 403 and "HF_TOKEN" in refused.json()["error"]["message"]


def test_a_dropped_line_resumes_where_it_stopped(server, hub, files):
    half = len(files["b"]) // 2
    hub.cut_after["cut.gguf"] = half
    final = events(server, repo="org/cut-GGUF")[-1]
    assert final["status"] == "success", final
    assert (server.models / "cut.gguf").read_bytes() == files["b"]
    assert hub.ranges("cut.gguf") == [None, f"bytes={half}-"]


def test_cancel_keeps_what_came_and_the_next_pull_resumes(server, hub, files):
    hub.bytes_per_second = 200_000
    try:
        started = pull(server, repo="org/slow-GGUF")
        assert started.status_code == 202 and started.json()["status"] == "downloading"
        wait_pull(server, "slow", lambda s: s["completed"] > 50_000)
        status = requests.get(f"{server.url}/v1/models/slow/status", headers=USER_H,
                              timeout=10).json()
        assert status["state"] == "downloading" and status["download"]["total"] == len(files["a"])
        assert "slow" not in [m["id"] for m in requests.get(
            f"{server.url}/v1/models", headers=USER_H, timeout=10).json()["data"]]
        cancelled = requests.delete(f"{server.url}/v1/models/pull/slow", headers=ADMIN_H,
                                    timeout=20).json()
        assert cancelled["status"] == "cancelled"
        kept = list((server.models / ".pulls" / "slow").glob("slow.gguf.*.part"))
        assert len(kept) == 1 and kept[0].stat().st_size >= 50_000
        offset = kept[0].stat().st_size
    finally:
        hub.bytes_per_second = 0
    final = events(server, repo="org/slow-GGUF")[-1]
    assert final["status"] == "success" and final["resumed_from"] == offset
    assert hub.ranges("slow.gguf")[-1] == f"bytes={offset}-"
    assert (server.models / "slow.gguf").read_bytes() == files["a"]


def test_pulls_of_one_model_are_one_download(server, hub):
    hub.bytes_per_second = 1_000_000
    answers: list[dict] = []
    try:
        threads = [threading.Thread(target=lambda: answers.append(
            pull(server, repo="org/shared-GGUF").json())) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        hub.bytes_per_second = 0
    assert [a["id"] for a in answers] == ["shared"] * 3
    wait_pull(server, "shared", lambda s: s["status"] == "success")
    assert hub.ranges("shared.gguf") == [None]


def test_a_corrupt_file_is_refused_and_deleted(server, hub):
    hub.corrupt.add("bad.gguf")
    final = events(server, repo="org/bad-GGUF")[-1]
    assert final["status"] == "error" and "corrupt" in final["error"]
    assert "sha256" in final["error"]
    assert not (server.models / "bad.gguf").exists()
    assert not list((server.models / ".pulls").rglob("bad.gguf*"))
    listed = requests.get(f"{server.url}/v1/models/pull", headers=USER_H, timeout=10).json()
    assert any(p["id"] == "bad" and p["status"] == "error" for p in listed["data"])


def test_a_pull_that_does_not_fit_the_quota_is_refused_before_a_byte(server, hub):
    r = pull(server, repo="org/big-GGUF")
    assert r.status_code == 507, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_storage" and "MODEL_STORAGE_LIMIT" in error["message"]
    assert hub.ranges("big.gguf") == []


def test_paths_that_would_leave_model_base_path_are_refused(server):
    for body, code in (({"repo": "org/tiny-GGUF", "name": "../escaped"}, 400),
                       ({"repo": "org/escape"}, 400),
                       ({"url": f"{server.url}/files/..%2F..%2Fescaped.gguf"}, 400),
                       ({"repo": "../org/tiny-GGUF"}, 400)):
        r = pull(server, **body)
        assert r.status_code == code, (body, r.text)
        assert r.json()["error"]["message"]
    assert not list(server.models.parent.rglob("escaped*"))


def test_a_plain_url_pull_checks_the_sha256_given(server, hub, files):
    import hashlib

    url = f"{hub.url}/files/url-model.gguf"
    wrong = events(server, url=url, sha256="0" * 64, name="url-wrong")[-1]
    assert wrong["status"] == "error" and "corrupt" in wrong["error"]
    right = events(server, url=url, sha256=hashlib.sha256(files["base"]).hexdigest())[-1]
    assert right["status"] == "success"
    meta = requests.get(f"{server.url}/v1/models/url-model", headers=USER_H,
                        timeout=10).json()["metadata"]
    assert meta["chat_template"] is False and "chat" not in meta["capabilities"]


def test_a_model_folder_from_modelscope(server, hub):
    final = events(server, source="modelscope", repo="org/tiny-folder")[-1]
    assert final["status"] == "success", final
    folder = server.models / "tiny-folder"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer_config.json"]
    info = requests.get(f"{server.url}/v1/models/tiny-folder/status", headers=USER_H,
                        timeout=10).json()
    meta = info["metadata"]
    assert meta["format"] == "safetensors" and meta["parameters"] == 256
    assert meta["context_length"] == 2048 and meta["embedding_length"] == 8
    assert {"chat", "tools", "reasoning"} <= set(meta["capabilities"])
    # a folder is for vLLM or MLX: on this CPU machine, loading it says so
    load = requests.post(f"{server.url}/v1/models/load", json={"model_name": "tiny-folder"},
                         headers=ADMIN_H, timeout=30)
    assert load.status_code == 400 and "engine_type" in load.json()["error"]["message"]


def test_model_base_path_is_rescanned(server, model_dir):
    def listed() -> list[str]:
        return [m["id"] for m in requests.get(f"{server.url}/v1/models", headers=USER_H,
                                              timeout=10).json()["data"]]

    copied = server.models / "copied-in.gguf"
    copied.write_bytes((model_dir / "tiny-base.gguf").read_bytes())
    assert "copied-in" in listed()
    reply = requests.post(f"{server.url}/v1/completions", headers=USER_H, timeout=60,
                          json={"model": "copied-in", "prompt": "a", "max_tokens": 2})
    assert reply.status_code == 200
    copied.unlink()  # loaded: it stays until unloaded
    assert "copied-in" in listed()
    unload = requests.delete(f"{server.url}/v1/models/copied-in/unload", headers=ADMIN_H,
                             timeout=30)
    assert unload.status_code == 200
    assert "copied-in" not in listed()


def test_ollama_pulls_a_hub_name_and_shows_what_it_is(server, hub):
    import ollama

    client = ollama.Client(host=server.url, headers=ADMIN_H)
    lines = list(client.pull("hf.co/org/tiny-GGUF:Q8_0", stream=True))
    assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
    pulling = [line for line in lines if line.status.startswith("pulling ") and line.total]
    assert pulling and pulling[-1].completed == pulling[-1].total
    shown = client.show("hf.co/org/tiny-GGUF:Q8_0")
    assert shown.details.family == "llama" and shown.details.quantization_level == "ALL_F32"
    assert "completion" in shown.capabilities
    answer = client.chat(model="hf.co/org/tiny-GGUF:Q8_0",
                         messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3})
    assert answer.message.content is not None
    # a second pull has nothing to fetch
    assert client.pull("hf.co/org/tiny-GGUF:Q8_0").status == "success"
