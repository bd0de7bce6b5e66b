#!/usr/bin/env python3
"""Serving benchmark for any OpenAI-compatible server, in the manner of vLLM's `bench serve`.

Closed loop at a fixed concurrency (each of C clients sends its next request
when the previous one ends) or open loop with Poisson arrivals at a request
rate. Every request streams; per request it records the time to first token
(TTFT), the time per output token after the first (TPOT), every inter-token
gap (ITL), the output tokens (from the usage chunk when the server sends one,
else from the token chunks) and errors.

  python benchmarks/bench_serving.py --base-url http://127.0.0.1:8000/v1 \
      --model gemma-3-270m --concurrency 1 4 8 16 --num-prompts 32 --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from openai import AsyncOpenAI

WORDS = ("river mountain quiet engine garden letter window silver market winter doctor "
         "planet coffee village morning signal harbor yellow forest machine summer pocket "
         "station library thunder candle bridge mirror ocean shadow").split()


def make_prompts(n: int, words: int, seed: int) -> list[str]:
    """Distinct prompts of about `words` words (roughly one token each)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f". Request {i}: continue."
            for i in range(n)]


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    reconnected: bool = False

    @property
    def tpot(self) -> Optional[float]:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


async def one_request(client: AsyncOpenAI, args: argparse.Namespace, prompt: str) -> RequestResult:
    """One streamed request. A connection dropped before any answer (a
    keep-alive connection the server had closed) is retried once, as
    browsers and proxies do; the retry is counted."""
    result = await _attempt(client, args, prompt)
    if result.error.startswith("APIConnectionError") and not result.output_tokens:
        result = await _attempt(client, args, prompt)
        result.reconnected = True
    return result


async def _attempt(client: AsyncOpenAI, args: argparse.Namespace, prompt: str) -> RequestResult:
    extra: dict[str, Any] = {"ignore_eos": True} if args.ignore_eos else {}
    if args.ban_tokens:
        extra["logit_bias"] = {str(t): -100 for t in args.ban_tokens}
    common = dict(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                  stream=True, stream_options={"include_usage": True}, extra_body=extra)
    started = time.perf_counter()
    first = last = None
    itl: list[float] = []
    chunks, usage_tokens = 0, None
    try:
        if args.endpoint == "chat":
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        async for chunk in stream:
            now = time.perf_counter()
            if getattr(chunk, "usage", None) is not None:
                usage_tokens = chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            text = c.delta.content if args.endpoint == "chat" else c.text
            if text:
                chunks += 1
                if first is None:
                    first = now
                else:
                    itl.append(now - last)
                last = now
    except Exception as exc:  # the benchmark counts errors, it does not stop on them
        return RequestResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
    end = time.perf_counter()
    if first is None:
        return RequestResult(ok=False, latency=end - started, error="no output")
    return RequestResult(ok=True, ttft=first - started, latency=end - started,
                         output_tokens=usage_tokens or chunks, itl=itl)


async def run_level(args: argparse.Namespace, concurrency: Optional[int],
                    rate: Optional[float]) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                         timeout=args.timeout)
    # fresh prompts at every level: a server's prefix cache must not turn one
    # level's prompts into the next level's cache hits
    prompts = make_prompts(args.num_prompts, args.prompt_words,
                           args.seed * 1000 + int((concurrency or 0) * 10 + (rate or 0) * 100))
    results: list[RequestResult] = []
    started = time.perf_counter()
    if rate is None:
        queue = list(prompts)

        async def worker() -> None:
            while queue:
                results.append(await one_request(client, args, queue.pop(0)))

        await asyncio.gather(*(worker() for _ in range(concurrency or 1)))
    else:
        rng = random.Random(args.seed)
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(one_request(client, args, prompt)))
            await asyncio.sleep(rng.expovariate(rate))
        results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - started
    await client.close()
    return summarize(results, duration, concurrency, rate)


def _pct(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _stats_ms(values: list[float]) -> dict[str, Optional[float]]:
    ms = [v * 1000 for v in values]
    return {"mean": statistics.fmean(ms) if ms else None, "median": _pct(ms, 0.5),
            "p95": _pct(ms, 0.95), "p99": _pct(ms, 0.99)}


def summarize(results: list[RequestResult], duration: float, concurrency: Optional[int],
              rate: Optional[float]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    return {
        "concurrency": concurrency, "request_rate": rate, "requests": len(results),
        "completed": len(ok), "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if not r.ok})[:5],
        "reconnects": sum(r.reconnected for r in results),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_output_tokens": out_tokens,
        "ttft_ms": _stats_ms([r.ttft for r in ok]),
        "tpot_ms": _stats_ms([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": _stats_ms([gap for r in ok for gap in r.itl]),
    }


def print_table(label: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{label}")
    print(f"{'conc':>5} {'rate':>6} {'ok':>4} {'err':>4} {'out tok/s':>10} {'req/s':>7} "
          f"{'TTFT med':>9} {'TTFT p99':>9} {'TPOT med':>9} {'ITL p99':>8}")
    fmt = lambda v: f"{v:9.1f}" if v is not None else f"{'-':>9}"  # noqa: E731
    for r in rows:
        print(f"{r['concurrency'] or '-':>5} {r['request_rate'] or '-':>6} {r['completed']:>4} "
              f"{r['errors']:>4} {r['output_throughput']:10.1f} {r['request_throughput']:7.2f} "
              f"{fmt(r['ttft_ms']['median'])} {fmt(r['ttft_ms']['p99'])} "
              f"{fmt(r['tpot_ms']['median'])} {fmt(r['itl_ms']['p99'])[1:]}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the server's OpenAI base URL, ending in /v1")
    p.add_argument("--model", required=True)
    p.add_argument("--label", default="", help="name of this server in the output")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1],
                   help="closed-loop concurrency levels to run in turn")
    p.add_argument("--request-rate", type=float, nargs="*", default=[],
                   help="Poisson arrival rates (req/s) to run in turn, instead of concurrency")
    p.add_argument("--num-prompts", type=int, default=32, help="requests per level")
    p.add_argument("--prompt-words", type=int, default=90, help="words per prompt (~tokens)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="send ignore_eos so every request produces max_tokens tokens")
    p.add_argument("--ban-tokens", type=int, nargs="*", default=[],
                   help="token ids sent with logit_bias -100: for servers without ignore_eos, "
                        "ban the end-of-generation tokens")
    p.add_argument("--warmup", type=int, default=2, help="requests sent before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default="benchmark")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", help="append the results as one JSON line to this file")
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.warmup:
        warm = argparse.Namespace(**{**vars(args), "num_prompts": args.warmup, "seed": args.seed + 1})
        await run_level(warm, 1, None)
    rows = []
    if args.request_rate:
        for rate in args.request_rate:
            rows.append(await run_level(args, None, rate))
    else:
        for level in args.concurrency:
            rows.append(await run_level(args, level, None))
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(main_async(args))
    label = args.label or args.base_url
    print_table(label, rows)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"label": label, "config": {k: v for k, v in vars(args).items()
                                                           if k not in ("api_key", "out")},
                                 "results": rows}) + "\n")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
