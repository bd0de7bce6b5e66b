#!/usr/bin/env python3
"""Markdown tables from bench_serving.py results (JSON lines): per endpoint,
each server's output tok/s, median TTFT and TPOT by concurrency, and the
ratios of the first server to the others. A server measured in several
rounds (alternating runs) shows the mean of its rounds.

  python benchmarks/summarize.py results.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _merge(rounds: list[dict]) -> dict:
    """One server's results at one concurrency, over its rounds."""
    return {"output_throughput": _mean([r["output_throughput"] for r in rounds]),
            "errors": sum(r["errors"] for r in rounds),
            "ttft": _mean([r["ttft_ms"]["median"] for r in rounds])
            if all(r["ttft_ms"]["median"] is not None for r in rounds) else None,
            "tpot": _mean([r["tpot_ms"]["median"] for r in rounds])
            if all(r["tpot_ms"]["median"] is not None for r in rounds) else None}


def main(src: str) -> None:
    runs = [json.loads(line) for line in open(src) if line.strip()]
    by_endpoint: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_endpoint[run["config"]["endpoint"]].append(run)
    for endpoint, group in by_endpoint.items():
        labels = list(dict.fromkeys(run["label"] for run in group))  # first seen first
        ours, others = labels[0], labels[1:]
        levels = list(dict.fromkeys(r["concurrency"] for run in group for r in run["results"]))
        rounds: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for run in group:
            for r in run["results"]:
                rounds[run["label"]][r["concurrency"]].append(r)
        table = {label: {c: _merge(rs) for c, rs in by_level.items()}
                 for label, by_level in rounds.items()}
        print(f"\n### /v1/{'chat/completions' if endpoint == 'chat' else endpoint}\n")
        head = ["concurrency"] + [f"{label} tok/s" for label in labels] + \
               [f"{label} TTFT / TPOT (ms)" for label in labels] + \
               [f"× {label}" for label in others]
        print("| " + " | ".join(head) + " |")
        print("|" + "---:|" * len(head))
        for c in levels:
            row = [str(c)]
            for label in labels:
                r = table[label].get(c)
                row.append(f"{r['output_throughput']:.1f}" + (f" ({r['errors']} err)"
                                                               if r["errors"] else "")
                           if r else "-")
            for label in labels:
                r = table[label].get(c)
                row.append(f"{r['ttft']:.0f} / {r['tpot']:.1f}"
                           if r and r["ttft"] is not None and r["tpot"] is not None else "-")
            mine = table[ours].get(c)
            for label in others:
                r = table[label].get(c)
                row.append(f"{mine['output_throughput'] / r['output_throughput']:.2f}×"
                           if mine and r and r["output_throughput"] else "-")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
