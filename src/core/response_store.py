"""Stored responses: an embedded SQLite database under DATA_DIR.

A record is a response object and the conversation items it was generated
from, kept as JSON whatever their wire shape; each belongs to the API key
that made it (its fingerprint; "" when the service runs without keys) and
is visible to that key alone. The file is created on first use; records
older than the retention are deleted as new ones are written. SQLite's own
locking lets several worker processes share the file.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional

from loguru import logger

from .concurrency import allocate_native_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""


class StoredResponse:
    def __init__(self, response: dict[str, Any], conversation: list[dict[str, Any]]):
        self.response = response
        self.conversation = conversation  # the input items, those inherited first


class ResponseStore:
    def __init__(self, path: Path, retention_days: float):
        self.path = path
        self.retention_seconds = retention_days * 86400
        self._lock = allocate_native_lock()
        self._connection: Optional[sqlite3.Connection] = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(str(self.path), timeout=10, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            self._connection = connection
            logger.info("Response store: {}", self.path)
        return self._connection

    def save(self, owner: str, response: dict[str, Any],
             conversation: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                       (response["id"], owner, now, json.dumps(response, ensure_ascii=False),
                        json.dumps(conversation, ensure_ascii=False)))
            if self.retention_seconds > 0:
                db.execute("DELETE FROM responses WHERE created_at < ?",
                           (now - self.retention_seconds,))

    def get(self, owner: str, response_id: str) -> Optional[StoredResponse]:
        """The record, or None when there is none for this owner (or it expired)."""
        oldest = time.time() - self.retention_seconds if self.retention_seconds > 0 else 0
        with self._lock:
            row = self._db().execute(
                "SELECT response, conversation FROM responses WHERE id = ? AND owner = ? "
                "AND created_at >= ?", (response_id, owner, oldest)).fetchone()
        return StoredResponse(json.loads(row[0]), json.loads(row[1])) if row else None

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            cursor = self._db().execute("DELETE FROM responses WHERE id = ? AND owner = ?",
                                        (response_id, owner))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
