#!/usr/bin/env python3
"""Plot bench_serving.py results (JSON lines): output throughput and median
TTFT against concurrency, one line per server, for one endpoint.

  python benchmarks/plot_results.py results.jsonl docs/benchmarks.png [chat|completions]
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str, endpoint: str = "chat") -> None:
    runs = [run for run in (json.loads(line) for line in open(src) if line.strip())
            if run["config"]["endpoint"] == endpoint]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        rows = [r for r in run["results"] if r["concurrency"]]
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["output_throughput"] for r in rows], marker="o", label=run["label"])
        right.plot(xs, [r["ttft_ms"]["median"] for r in rows], marker="o", label=run["label"])
    left.set(title=f"Output throughput ({endpoint})", xlabel="concurrency", ylabel="tokens/s")
    right.set(title="Time to first token (median)", xlabel="concurrency", ylabel="ms")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
