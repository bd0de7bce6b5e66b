"""A local model hub for the pull tests: files served over real HTTP in
Hugging Face's URL layout (`/api/models/{repo}/revision/{rev}`,
`/{repo}/resolve/{rev}/{file}`), ModelScope's (`/api/v1/models/{repo}/repo/files`,
`/api/v1/models/{repo}/repo?FilePath=`) and as plain URLs (`/files/{name}`),
with Range requests, and the faults a real network has: a slow line, a
connection cut part way, a file whose bytes do not match its advertised
sha256, a token the hub requires."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> bytes
    plain: dict[str, bytes] = field(default_factory=dict)  # /files/<name> -> bytes
    bytes_per_second: float = 0.0  # 0: as fast as it goes
    cut_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, then the line drops (once)
    corrupt: set[str] = field(default_factory=set)  # files served with one byte changed
    token: Optional[str] = None  # required as "Bearer <token>" when set
    requests: list[tuple[str, str, Optional[str]]] = field(default_factory=list)  # method, path, Range

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ranges(self, suffix: str) -> list[Optional[str]]:
        """The Range headers of the GETs of a file path ending in `suffix`."""
        return [r for m, p, r in self.requests if m == "GET" and unquote(p).endswith(suffix)]

    # serving --------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        self.requests.append((h.command, h.path, h.headers.get("Range")))
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(h, 401, {"error": "Invalid credentials"})
        if path.startswith("/api/models/"):  # Hugging Face: the repo and its files
            repo, _, _rev = path[len("/api/models/"):].partition("/revision/")
            files = self.repos.get(repo)
            if files is None:
                return _json(h, 404, {"error": "Repository not found"},
                             {"X-Error-Code": "RepoNotFound"})
            return _json(h, 200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": [
                {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
                 "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "pointerSize": 134}} for name, data in files.items()]})
        if path.startswith("/api/v1/models/") and path.endswith("/repo/files"):  # ModelScope
            repo = path[len("/api/v1/models/"):-len("/repo/files")]
            files = self.repos.get(repo)
            if files is None:
                return _json(h, 404, {"Code": 10010205001, "Message": "model not found",
                                      "Success": False})
            return _json(h, 200, {"Code": 200, "Success": True, "Data": {"Files": [
                {"Name": name.rsplit("/", 1)[-1], "Path": name, "Type": "blob",
                 "Size": len(data), "Sha256": hashlib.sha256(data).hexdigest()}
                for name, data in files.items()]}})
        if path.startswith("/api/v1/models/") and path.endswith("/repo"):
            repo = path[len("/api/v1/models/"):-len("/repo")]
            name = (query.get("FilePath") or [""])[0]
            return self._file(h, head, name, self.repos.get(repo, {}).get(name))
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            _rev, _, name = rest.partition("/")
            return self._file(h, head, name, self.repos.get(repo, {}).get(name))
        if path.startswith("/files/"):
            name = path[len("/files/"):]
            return self._file(h, head, name, self.plain.get(name))
        _json(h, 404, {"error": "not found"})

    def _file(self, h: BaseHTTPRequestHandler, head: bool, name: str,
              data: Optional[bytes]) -> None:
        if data is None:
            return _json(h, 404, {"error": "Entry not found"})
        if name in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        header = h.headers.get("Range")
        if header and header.startswith("bytes="):
            start = int(header[len("bytes="):].split("-")[0])
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", COMMIT)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        cut = self.cut_after.pop(name, None)
        sent, chunk = 0, 8192
        while sent < len(body):
            piece = body[sent:sent + chunk]
            if cut is not None and start + sent + len(piece) > cut:
                h.wfile.write(body[sent:cut - start])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)  # the line drops part way
                return
            try:
                h.wfile.write(piece)
            except OSError:  # the client went away (a cancelled pull)
                return
            sent += len(piece)
            if self.bytes_per_second:
                time.sleep(len(piece) / self.bytes_per_second)


def _json(h: BaseHTTPRequestHandler, status: int, body: dict,
          headers: Optional[dict[str, str]] = None) -> None:
    import json

    raw = json.dumps(body).encode()
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(raw)
