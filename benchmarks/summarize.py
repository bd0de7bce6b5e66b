#!/usr/bin/env python3
"""Markdown tables from bench_serving.py results (JSON lines): per endpoint,
each server's output tok/s, median TTFT and TPOT by concurrency, and the
ratios of the first server to the others.

  python benchmarks/summarize.py results.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(src: str) -> None:
    runs = [json.loads(line) for line in open(src) if line.strip()]
    by_endpoint: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_endpoint[run["config"]["endpoint"]].append(run)
    for endpoint, group in by_endpoint.items():
        ours, others = group[0], group[1:]
        levels = [r["concurrency"] for r in ours["results"]]
        table = {run["label"]: {r["concurrency"]: r for r in run["results"]} for run in group}
        print(f"\n### /v1/{'chat/completions' if endpoint == 'chat' else endpoint}\n")
        head = ["concurrency"] + [f"{run['label']} tok/s" for run in group] + \
               [f"{run['label']} TTFT / TPOT (ms)" for run in group] + \
               [f"× {run['label']}" for run in others]
        print("| " + " | ".join(head) + " |")
        print("|" + "---:|" * len(head))
        for c in levels:
            row = [str(c)]
            for run in group:
                r = table[run["label"]].get(c)
                row.append(f"{r['output_throughput']:.1f}" + (f" ({r['errors']} err)"
                                                               if r["errors"] else "")
                           if r else "-")
            for run in group:
                r = table[run["label"]].get(c)
                row.append(f"{r['ttft_ms']['median']:.0f} / {r['tpot_ms']['median']:.1f}"
                           if r and r["ttft_ms"]["median"] is not None else "-")
            mine = table[ours["label"]][c]["output_throughput"]
            for run in others:
                r = table[run["label"]].get(c)
                row.append(f"{mine / r['output_throughput']:.2f}×"
                           if r and r["output_throughput"] else "-")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
