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
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import urllib3
from flask import Response

from ..core.exceptions import BadGatewayError, ClientDisconnectedError, ServiceUnavailableError
from ..core.load_balancer import LoadBalancer
from ..utils.cluster_manager import Instance, http_pool
from ..utils.logger import logger
from .client_connection import client_disconnected

ATTEMPTS = 2  # the first instance, and one more
CONNECT_TIMEOUT = 5.0
WATCH_INTERVAL = 0.2  # seconds between two looks at the client's socket
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "host",
                        "content-length"})
_FAILURES = (urllib3.exceptions.HTTPError, OSError)


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
    instance ends at once (and closes the connection to it). Elsewhere (the
    development server) there is no socket to watch and nothing happens."""

    def __init__(self, environ: dict[str, Any]):
        self._task = None
        if environ.get("gunicorn.socket") is None:
            return
        import gevent

        gone, target = client_disconnected(environ), gevent.getcurrent()

        def watch() -> None:
            while True:
                gevent.sleep(WATCH_INTERVAL)
                if gone():
                    gevent.kill(target, ClientDisconnectedError("The client closed the "
                                                                "connection."))
                    return

        self._task = gevent.spawn(watch)

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
            upstream = None
            try:
                upstream = http_pool.urlopen(
                    out.method, inst.url + out.path, body=out.body or None,
                    headers=instance_headers(inst, incoming, request_id, peer),
                    preload_content=False, decode_content=False, redirect=False,
                    timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=out.read_timeout))
                status = upstream.status
                if status in (502, 503) and attempt + 1 < ATTEMPTS and \
                        balancer.candidates(out.model, exclude=tried):
                    busy = status == 503 and "Retry-After" in upstream.headers
                    cluster.report_failure(inst, f"answered {status}", take_out=not busy)
                    last_failure = f"{inst.id} answered {status}"
                    _discard(upstream)
                    balancer.finished(inst)
                    continue
                if status >= 500 and status not in (503, 504):
                    cluster.report_failure(inst, f"answered {status}", take_out=True)
                streamed = upstream.headers.get("Content-Type", "").startswith(
                    "text/event-stream")
                chunks = _chunks(upstream)
                body = next(chunks, b"") if streamed else b"".join(chunks)
                balancer.first_byte(inst, time.monotonic() - started)
            except _FAILURES as exc:
                reason = f"{exc.__class__.__name__} from {inst.url}"
                cluster.report_failure(inst, reason, take_out=True)
                logger.warning("Request failed at {} before its answer ({}); {}", inst.id,
                               exc.__class__.__name__,
                               "trying another instance" if attempt + 1 < ATTEMPTS
                               else "giving up")
                last_failure = f"{inst.id}: {exc.__class__.__name__}"
                _discard(upstream)
                balancer.finished(inst)
                continue
            except BaseException:  # the client left (ClientWatch), or worse
                _discard(upstream)
                balancer.finished(inst)
                raise
            headers = [(k, v) for k, v in upstream.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "x-request-id"]
            headers.append(("X-Instance", inst.id))
            if not streamed:
                upstream.release_conn()
                balancer.finished(inst)
                return Response(body, status=status, headers=headers)
            relay = _relay(balancer, inst, upstream, body, chunks, out.path, watch)
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


def _relay(balancer: LoadBalancer, inst: Instance, upstream: urllib3.BaseHTTPResponse,
           first: bytes, chunks: Iterator[bytes], path: str, watch: ClientWatch
           ) -> Iterator[bytes]:
    complete = False
    try:
        yield first
        yield from chunks
        complete = True
    except _FAILURES as exc:
        balancer.cluster.report_failure(inst, f"stream cut: {exc.__class__.__name__}",
                                        take_out=True)
        logger.warning("Stream from {} cut ({}): ending it with an error event", inst.id,
                       exc.__class__.__name__)
        yield _stream_error(path, f"The instance serving this stream failed "
                                  f"({exc.__class__.__name__}); the stream is incomplete.")
    except ClientDisconnectedError:
        pass  # closing the instance's connection below ends the work there
    finally:
        watch.stop()
        if complete:
            upstream.release_conn()
        else:
            _discard(upstream)
        balancer.finished(inst)


def _stream_error(path: str, message: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None,
             "code": BadGatewayError.code}
    if path.split("?")[0].rstrip("/").endswith("responses"):
        event = {"type": "error", "code": error["code"], "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
    return f"data: {json.dumps({'error': error})}\n\ndata: [DONE]\n\n".encode()


def _discard(upstream: Optional[urllib3.BaseHTTPResponse]) -> None:
    """Close the connection of an answer not read to its end (the instance
    sees its client leave)."""
    if upstream is not None:
        upstream.close()
        upstream.release_conn()


@dataclass
class Answer:
    status: Optional[int]  # None: no answer (the error says why)
    body: Any  # the JSON answer, or None
    error: Optional[str] = None


def call_each(instances: list[Instance], method: str, path: str, body: bytes,
              incoming: dict[str, str], request_id: str, peer: Optional[str],
              timeout: float) -> dict[str, Answer]:
    """The same request to every instance at once (listing models, loading
    one everywhere); each instance's JSON answer by its id."""
    from concurrent.futures import ThreadPoolExecutor  # green threads under gevent

    def call(inst: Instance) -> Answer:
        try:
            resp = http_pool.request(method, inst.url + path, body=body or None,
                                 headers=instance_headers(inst, incoming, request_id, peer),
                                 timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=timeout))
        except _FAILURES as exc:
            return Answer(None, None, f"{exc.__class__.__name__} from {inst.url}")
        try:
            return Answer(resp.status, json.loads(resp.data))
        except ValueError:
            return Answer(resp.status, None, f"{inst.id} answered {resp.status} without JSON")

    if not instances:
        return {}
    with ThreadPoolExecutor(max_workers=len(instances)) as pool:
        return dict(zip((i.id for i in instances), pool.map(call, instances)))
