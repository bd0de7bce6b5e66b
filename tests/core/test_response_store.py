"""The response store on its own: a real SQLite file, owners, retention."""
from __future__ import annotations

import sqlite3
import time

from src.core.response_store import ResponseStore


def test_created_on_first_use_owned_and_deleted(tmp_path):
    path = tmp_path / "data" / "responses.sqlite3"
    store = ResponseStore(path, retention_days=30)
    assert not path.exists()  # nothing written before the first use
    store.save("key:alice", {"id": "resp_1", "output": []}, [{"id": "msg_1"}])
    assert path.is_file()
    assert store.get("key:bob", "resp_1") is None
    found = store.get("key:alice", "resp_1")
    assert found.response["id"] == "resp_1" and found.conversation == [{"id": "msg_1"}]
    assert not store.delete("key:bob", "resp_1")
    assert store.delete("key:alice", "resp_1") and store.get("key:alice", "resp_1") is None
    store.close()


def test_expired_responses_are_neither_read_nor_kept(tmp_path):
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path, retention_days=1 / 86400)  # one second
    store.save("", {"id": "resp_old", "output": []}, [])
    time.sleep(1.2)
    assert store.get("", "resp_old") is None
    store.save("", {"id": "resp_new", "output": []}, [])  # a write deletes what expired
    rows = sqlite3.connect(path).execute("SELECT id FROM responses").fetchall()
    assert rows == [("resp_new",)]
    forever = ResponseStore(path, retention_days=0)
    time.sleep(1.2)
    assert forever.get("", "resp_new") is not None
