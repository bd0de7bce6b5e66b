"""Forward one request to an instance of the cluster, with failover.

A request that fails before any byte reached the client (refused or broken
connection, the instance died, a 502 or 503 answer) is sent once more, to
another instance; the failed one is reported to the cluster manager, which
takes it out until a health check passes (a 503 with Retry-After is an
instance that is busy, not broken: it stays in). An answer that is not a
stream is read whole before it is passed on, so an instance dying half-way
through it still fails over; a stream is passed on chunk by chunk as the
instance writes it, after its first chunk, and a stream cut after that ends
with a clean error event. X-Request-ID goes through to the instance, and a
client that hangs up closes the instance's connection, which ends the work
there.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import urllib3
from flask import Response

from ..core.exceptions import BadGatewayError, ClientDisconnectedError, ServiceUnavailableError
from ..utils.client_connection import client_disconnected
from ..utils.logger import logger
from .balancer import LoadBalancer
from .instance import Instance, http_pool

ATTEMPTS = 2  # the first instance, and one more
CONNECT_TIMEOUT = 5.0
WATCH_INTERVAL = 0.2  # seconds between two looks at the client's socket
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "host",
                        "content-length"})
FAILURES = (urllib3.exceptions.HTTPError, OSError)  # an instance that did not answer


@dataclass
class Outgoing:
    method: str
    path: str  # with its query string
    body: bytes
    headers: dict[str, str]
    model: Optional[str]
    read_timeout: float


def model_of(body: bytes) -> Optional[str]:
    """The `model` a JSON body names, if it names one; the instance judges the rest."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def instance_headers(inst: Instance, incoming: dict[str, str], request_id: str,
                     peer: Optional[str]) -> dict[str, str]:
    headers = {k: v for k, v in incoming.items() if k.lower() not in HOP_BY_HOP
               and k.lower() not in ("x-request-id", "x-forwarded-for")}
    headers["X-Request-ID"] = request_id
    forwarded = incoming.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else (peer or "")
    if inst.api_key:  # a remote upstream with its own key
        headers = {k: v for k, v in headers.items()
                   if k.lower() not in ("authorization", "x-api-key")}
        headers["Authorization"] = f"Bearer {inst.api_key}"
    return headers


class ClientWatch:
    """Under Gunicorn's gevent worker, interrupt the request's greenlet with
    ClientDisconnectedError once its client hangs up, so that waiting on an
    instance ends at once (and closes the connection to it). The error is
    thrown only while the greenlet waits inside `guard()` (on the instance),
    never into the balancer's bookkeeping or Gunicorn's own code, and never
    after `stop()`. Elsewhere (the development server) there is no socket to
    watch and nothing happens."""

    def __init__(self, environ: dict[str, Any]):
        self._task = None
        self._guarded = False
        if environ.get("gunicorn.socket") is None:
            return
        import gevent

        gone, target, hub = client_disconnected(environ), gevent.getcurrent(), gevent.get_hub()

        def throw() -> None:  # in the hub, while the request's greenlet waits
            if self._task is not None and self._guarded:
                self.stop()
                target.throw(ClientDisconnectedError("The client closed the connection."))

        def watch() -> None:
            while True:
                gevent.sleep(WATCH_INTERVAL)
                if self._guarded and gone():
                    hub.loop.run_callback(throw)

        self._task = gevent.spawn(watch)

    @contextmanager
    def guard(self) -> Iterator[None]:
        self._guarded = True
        try:
            yield
        finally:
            self._guarded = False

    def stop(self) -> None:
        if self._task is not None:
            self._task.kill(block=False)
            self._task = None


def forward(balancer: LoadBalancer, out: Outgoing, incoming: dict[str, str], request_id: str,
            peer: Optional[str], environ: dict[str, Any]) -> Response:
    cluster = balancer.cluster
    watch = ClientWatch(environ)
    tried: list[Instance] = []
    last_failure = None
    try:
        for attempt in range(ATTEMPTS):
            inst = balancer.choose(out.model, exclude=tried)
            if inst is None:
                break
            tried.append(inst)
            started = time.monotonic()
            upstream: Optional[urllib3.BaseHTTPResponse] = None
            kept = False  # the answer goes to the client; else the attempt is undone below
            try:
                with watch.guard():
                    upstream = http_pool.urlopen(
                        out.method, inst.url + out.path, body=out.body or None,
                        headers=instance_headers(inst, incoming, request_id, peer),
                        preload_content=False, decode_content=False, redirect=False,
                        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=out.read_timeout))
                    status = upstream.status
                    streamed = upstream.headers.get("Content-Type", "").startswith(
                        "text/event-stream")
                    retry = status in (502, 503) and attempt + 1 < ATTEMPTS and \
                        bool(balancer.candidates(out.model, exclude=tried))
                    chunks = _chunks(upstream)
                    if not retry:
                        body = next(chunks, b"") if streamed else b"".join(chunks)
                if retry:
                    busy = status == 503 and "Retry-After" in upstream.headers
                    cluster.report_failure(inst, f"answered {status}", take_out=not busy)
                    last_failure = f"{inst.id} answered {status}"
                    continue
                if status >= 500 and status not in (503, 504):
                    cluster.report_failure(inst, f"answered {status}", take_out=True)
                balancer.first_byte(inst, time.monotonic() - started)
                kept = True
            except FAILURES as exc:
                reason = f"{exc.__class__.__name__} from {inst.url}"
                cluster.report_failure(inst, reason, take_out=True)
                logger.warning("Request failed at {} before its answer ({}); {}", inst.id,
                               exc.__class__.__name__,
                               "trying another instance" if attempt + 1 < ATTEMPTS
                               else "giving up")
                last_failure = f"{inst.id}: {exc.__class__.__name__}"
                continue
            finally:
                if not kept:  # whatever ended the attempt: a failure, or the client left
                    _discard(upstream)
                    balancer.finished(inst)
            headers = [(k, v) for k, v in upstream.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "x-request-id"]
            headers.append(("X-Instance", inst.id))
            if not streamed:
                upstream.release_conn()
                balancer.finished(inst)
                return Response(body, status=status, headers=headers)
            relay = _Relay(balancer, inst, upstream, body, chunks, out.path, watch)
            watch = None  # the relay stops it when the stream ends
            response = Response(relay, status=status, headers=headers)
            response.call_on_close(relay.close)
            return response
    finally:
        if watch is not None:
            watch.stop()
    if last_failure is None:
        raise ServiceUnavailableError(
            "No healthy instance can serve this request now; try again shortly.",
            headers={"Retry-After": "5"})
    raise BadGatewayError(f"The instances failed before answering ({last_failure}; tried "
                          f"{len(tried)} of them).")


def _chunks(upstream: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as the instance writes it: HTTP chunk by HTTP chunk."""
    if upstream.chunked:
        yield from upstream.read_chunked(decode_content=False)
        return
    while True:
        data = upstream.read1(65536, decode_content=False)
        if not data:
            return
        yield data


class _Relay:
    """A stream passed on chunk by chunk. Its end, however it comes (the
    stream done, cut by the instance, the client gone, or never read at
    all), releases the instance once: `close()` runs whether or not the
    iteration ever started."""

    def __init__(self, balancer: LoadBalancer, inst: Instance,
                 upstream: urllib3.BaseHTTPResponse, first: bytes, chunks: Iterator[bytes],
                 path: str, watch: ClientWatch):
        self._balancer, self._inst, self._upstream = balancer, inst, upstream
        self._first, self._chunks, self._path, self._watch = first, chunks, path, watch
        self._complete = self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield self._first
            while True:
                with self._watch.guard():  # waiting on the instance, not writing to the client
                    chunk = next(self._chunks, None)
                if chunk is None:
                    break
                yield chunk
            self._complete = True
        except FAILURES as exc:
            self._balancer.cluster.report_failure(
                self._inst, f"stream cut: {exc.__class__.__name__}", take_out=True)
            logger.warning("Stream from {} cut ({}): ending it with an error event",
                           self._inst.id, exc.__class__.__name__)
            yield _stream_error(self._path, f"The instance serving this stream failed "
                                            f"({exc.__class__.__name__}); the stream is "
                                            f"incomplete.")
        except ClientDisconnectedError:
            pass  # closing the instance's connection ends the work there
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch.stop()
        if self._complete:
            self._upstream.release_conn()
        else:
            _discard(self._upstream)
        self._balancer.finished(self._inst)


def _stream_error(path: str, message: str) -> bytes:
    body = BadGatewayError(message).to_dict()
    if path.split("?")[0].rstrip("/").endswith("responses"):
        event = {"type": "error", "code": body["error"]["code"], "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()


def _discard(upstream: Optional[urllib3.BaseHTTPResponse]) -> None:
    """Close the connection of an answer not read to its end (the instance
    sees its client leave)."""
    if upstream is not None:
        upstream.close()
        upstream.release_conn()
