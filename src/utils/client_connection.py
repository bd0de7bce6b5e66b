"""Tell whether the client of a request in progress has gone away.

A streaming response learns it when a write fails; a non-streaming request
writes nothing until the end, so it asks the socket: readable with nothing
to read means the peer closed it. Only Gunicorn exposes the socket
(`gunicorn.socket`); elsewhere the answer is always "still there".
"""
from __future__ import annotations

import select
import socket
from typing import Any, Callable


def client_disconnected(environ: dict[str, Any]) -> Callable[[], bool]:
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone
