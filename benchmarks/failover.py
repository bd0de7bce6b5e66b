#!/usr/bin/env python3
"""Failover under load: a load-balanced cluster loses an instance to SIGKILL
every --kill-every seconds while clients keep sending requests.

Clients run in threads, each in a loop of chat requests (non-streaming and
streaming, alternately) through the entry point. Every request ends one way:
completed (200, and a stream that reached [DONE] with no error event),
cut (a stream already under way when its instance died: it must end with a
clean error event and [DONE]), or lost: anything else (a connection error, a
non-200 answer, a stream that ends without [DONE]). Lost must be 0. For each
kill, the time until the instance is healthy again (a new pid) is measured
from /v1/cluster/status.

    python benchmarks/failover.py                      # 120 s, SmolLM2, 2 instances
    python benchmarks/failover.py --json benchmarks/results/failover.json
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

import requests

from launch import free_port, launch


def start_cluster(args: argparse.Namespace, log_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {"LOG_DIR": str(log_dir), "INFERENCE_MODE": "load_balance",
           "CLUSTER_INSTANCES": str(args.instances), "MAX_INSTANCES": str(args.instances),
           "CLUSTER_BASE_PORT": str(free_port()), "HEALTH_CHECK_INTERVAL": str(args.interval),
           "DEFAULT_MODEL": args.model, "LOAD_BALANCE_STRATEGY": args.strategy,
           "METRICS_INTERVAL": "0"}
    return launch(env, log_dir / "entry.out", lambda url: requests.get(
        f"{url}/v1/cluster/status", timeout=2).json()["healthy_instances"] == args.instances)


def one_request(url: str, model: str, stream: bool, max_tokens: int) -> str:
    body = {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": random.choice(
                ["Tell me about foxes.", "Write a haiku.", "List three fruits."])}]}
    try:
        resp = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                             stream=stream)
        if resp.status_code != 200:
            return f"lost: status {resp.status_code}"
        if not stream:
            return "completed" if resp.json()["choices"] else "lost: no choices"
        lines = [ln.decode() for ln in resp.iter_lines() if ln]
    except (requests.RequestException, ValueError) as exc:
        return f"lost: {exc.__class__.__name__}"
    if not lines or lines[-1] != "data: [DONE]":
        return "lost: stream without [DONE]"
    errors = [ln for ln in lines if ln.startswith('data: {"error"')]
    return "cut" if errors else "completed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--kill-every", type=float, default=20)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--interval", type=float, default=10, help="HEALTH_CHECK_INTERVAL")
    parser.add_argument("--strategy", default="least_connections")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log_dir = Path(f"/tmp/failover-{os.getpid()}")
    log_dir.mkdir(parents=True, exist_ok=True)
    proc, url = start_cluster(args, log_dir)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        n = 0
        while not stop.is_set():
            result = one_request(url, args.model, stream=(n + index) % 2 == 1,
                                 max_tokens=args.max_tokens)
            with lock:
                outcomes[result] += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    recoveries = []
    try:
        kill = 0
        while time.monotonic() - started + args.kill_every < args.duration:
            time.sleep(args.kill_every)
            instances = requests.get(f"{url}/v1/cluster/status", timeout=5).json()["instances"]
            name = f"instance_{kill % args.instances}"
            pid = instances[name]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 120:
                now = requests.get(f"{url}/v1/cluster/status", timeout=5).json()["instances"]
                if now[name]["healthy"] and now[name]["pid"] != pid:
                    recoveries.append(round(time.monotonic() - killed, 2))
                    break
                time.sleep(0.1)
            kill += 1
        time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
    finally:
        stop.set()
        for t in threads:
            t.join()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    lost = sum(v for k, v in outcomes.items() if k.startswith("lost"))
    report = {"duration_s": args.duration, "clients": args.clients,
              "instances": args.instances, "strategy": args.strategy, "model": args.model,
              "health_check_interval_s": args.interval, "kills": len(recoveries),
              "recovery_s": recoveries, "requests": sum(outcomes.values()),
              "outcomes": dict(outcomes), "lost": lost}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
