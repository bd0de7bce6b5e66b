#!/usr/bin/env python3
"""A bounded soak test: a mixed load against a real server for a few minutes.

Clients run in threads, each in a loop: streaming and non-streaming chat,
completions, and streams the client cancels after its first chunk. There
are more clients than the server's queue admits (MAX_CONCURRENT_REQUESTS),
so some requests are refused with 503, and with --rpm some with 429.

Every request ends one way: completed, rejected (429/503 in the OpenAI
shape), cancelled (by the client, on purpose), or lost: anything else (a
connection error, a 5xx other than 503, a stream without [DONE], a body that
is not the OpenAI shape). Lost must be 0. The server's memory (RSS of the
gunicorn master and workers) is sampled throughout: peak, after warm-up,
at the end.

    python benchmarks/soak.py                       # 180 s, SmolLM2, 24 clients
    python benchmarks/soak.py --duration 600 --clients 48 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import requests

from launch import launch
PROMPTS = ["Tell me a short story about a fox.", "What is the capital of France?",
           "Write a haiku about the sea.", "List three fruits.", "Explain rain to a child."]


def start_server(args: argparse.Namespace, log_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {"LOG_DIR": str(log_dir), "DEFAULT_MODEL": args.model,
           "MAX_CONCURRENT_REQUESTS": str(args.queue), "MAX_BATCH_SIZE": str(args.batch),
           "RATE_LIMIT_RPM": str(args.rpm), "METRICS_INTERVAL": "0"}
    return launch(env, log_dir / "server.out",
                  lambda url: requests.get(f"{url}/health", timeout=2).status_code == 200)


def server_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lost_examples: list[str] = []
        self.lock = threading.Lock()

    def add(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == "lost" and len(self.lost_examples) < 10:
                self.lost_examples.append(detail)


def is_openai_error(resp: requests.Response) -> bool:
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(error) == {"message", "type", "param", "code"}


def one_request(url: str, model: str, kind: str, tally: Tally, rng: random.Random) -> bool:
    """One request, tallied; False when it was refused (the client backs off)."""
    messages = [{"role": "user", "content": rng.choice(PROMPTS)}]
    max_tokens = rng.choice([8, 32, 64])
    if kind == "completion":
        path, body = "/v1/completions", {"model": model, "prompt": rng.choice(PROMPTS),
                                         "max_tokens": max_tokens}
    else:
        path, body = "/v1/chat/completions", {"model": model, "messages": messages,
                                              "max_tokens": max_tokens}
    streaming = kind in ("stream", "cancel")
    body["stream"] = streaming
    tally.add("sent")
    try:
        resp = requests.post(url + path, json=body, stream=streaming, timeout=300)
        if resp.status_code in (429, 503):
            tally.add(f"rejected_{resp.status_code}" if is_openai_error(resp) else "lost",
                      f"{resp.status_code} {resp.text[:200]}")
            return False
        if resp.status_code != 200:
            tally.add("lost", f"{kind}: {resp.status_code} {resp.text[:200]}")
            return True
        if not streaming:
            resp.json()["choices"][0]
            tally.add("completed")
            return True
        lines = resp.iter_lines()
        if kind == "cancel":
            next(line for line in lines if line.startswith(b"data: "))
            resp.close()
            tally.add("cancelled")
            return True
        data = [line for line in lines if line.startswith(b"data: ")]
        if data and data[-1] == b"data: [DONE]" and b'"error"' not in b"".join(data):
            tally.add("completed")
        else:
            tally.add("lost", f"stream ended: {data[-1][:200] if data else b'(nothing)'}")
    except (requests.RequestException, ValueError, KeyError, StopIteration) as exc:
        tally.add("lost", f"{kind}: {exc.__class__.__name__}: {exc}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load")
    parser.add_argument("--clients", type=int, default=24, help="concurrent client threads")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--queue", type=int, default=8, help="MAX_CONCURRENT_REQUESTS")
    parser.add_argument("--batch", type=int, default=4, help="MAX_BATCH_SIZE")
    parser.add_argument("--rpm", type=int, default=0, help="RATE_LIMIT_RPM (per client IP)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()

    log_dir = Path(os.environ.get("SOAK_LOG_DIR", "/tmp/vllm-obtain-soak"))
    log_dir.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args, log_dir)
    tally, stop = Tally(), time.monotonic() + args.duration
    kinds = ["stream"] * 4 + ["chat"] * 3 + ["completion"] * 2 + ["cancel"] * 2

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        while time.monotonic() < stop:
            if not one_request(url, args.model, rng.choice(kinds), tally, rng):
                time.sleep(rng.uniform(0.2, 1.0))  # refused: back off, as the SDKs do

    memory: list[tuple[float, int]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        memory.append((time.monotonic() - started, server_rss(proc.pid)))
        time.sleep(2)
    for t in threads:
        t.join()
    time.sleep(1)
    idle = requests.get(f"{url}/v1/models/{args.model}/status", timeout=10).json()["runtime"]
    memory.append((time.monotonic() - started, server_rss(proc.pid)))
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)

    warm = [rss for t, rss in memory if t >= args.duration * 0.2]
    figures = {
        "duration_s": args.duration, "clients": args.clients, "model": args.model,
        "queue": args.queue, "batch": args.batch, "rpm": args.rpm,
        **{k: tally.counts.get(k, 0) for k in ("sent", "completed", "cancelled",
                                                "rejected_429", "rejected_503", "lost")},
        "in_flight_after": idle["requests_running"] + idle["requests_waiting"],
        "rss_peak_mb": round(max(r for _, r in memory) / 2**20, 1),
        "rss_after_warmup_mb": round(warm[0] / 2**20, 1),
        "rss_end_mb": round(memory[-1][1] / 2**20, 1),
        "lost_examples": tally.lost_examples,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    accounted = sum(figures[k] for k in ("completed", "cancelled", "rejected_429",
                                          "rejected_503", "lost"))
    ok = figures["lost"] == 0 and accounted == figures["sent"] and not figures["in_flight_after"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
