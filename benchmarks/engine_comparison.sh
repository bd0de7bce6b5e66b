#!/usr/bin/env bash
# The MLX and vLLM engines against their own libraries' servers, side by side on
# one machine: the same model folder (a random ~4M-parameter Llama written here,
# nothing downloaded; MLX's CPU backend runs a 37M one at ~1 GFLOP/s, too slow to
# measure at several concurrencies), the same prompts and load, the servers one at a time in
# alternating rounds (this service, the reference, [the baseline], and again).
#
#   ENGINE=mlx  bash benchmarks/engine_comparison.sh results.jsonl   # vs mlx_lm.server
#   ENGINE=vllm bash benchmarks/engine_comparison.sh results.jsonl   # vs vllm serve (.venv-vllm)
#   python benchmarks/summarize.py results.jsonl
#
# Optional: LEVELS ("1 4 8"), NUM_PROMPTS (16), ROUNDS (2), PARALLEL (8 sequences),
# PROMPT_WORDS (30; about 6 tokens a word with this tiny vocabulary),
# ENDPOINT (completions), BASELINE (a checkout of another commit of this service, run
# as a third server with the same settings: the engine before a change).
# The random model never picks its end token at temperature 0 (its row is zero),
# so every request produces all 128 tokens on every server without ignore_eos.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:?usage: engine_comparison.sh RESULTS.jsonl}
ENGINE=${ENGINE:?ENGINE=mlx or ENGINE=vllm}
LEVELS=${LEVELS:-"1 4 8"}
NUM_PROMPTS=${NUM_PROMPTS:-16}
ROUNDS=${ROUNDS:-2}
PARALLEL=${PARALLEL:-8}
ENDPOINT=${ENDPOINT:-completions}
PROMPT_WORDS=${PROMPT_WORDS:-30}
CONTEXT=2048
if [ "$ENGINE" = vllm ]; then PY=$ROOT/.venv-vllm/bin/python; else PY=$ROOT/.venv/bin/python; fi
MODEL_DIR=${MODEL_DIR:-/tmp/bench-llama-4m}
[ -f "$MODEL_DIR/config.json" ] || $PY -c "
import sys; from pathlib import Path; sys.path.insert(0, '$ROOT')
from tests.tiny_hf_model import write_tiny_hf_model
write_tiny_hf_model(Path('$MODEL_DIR'), hidden=256, layers=6, heads=4)"
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}

wait_up() { for _ in $(seq 1 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; sleep 2; }
bench() {  # base-url model label
    $ROOT/.venv/bin/python benchmarks/bench_serving.py --base-url "$1" --model "$2" --label "$3" \
        --endpoint "$ENDPOINT" --num-prompts "$NUM_PROMPTS" --prompt-words "$PROMPT_WORDS" --max-tokens 128 \
        --temperature 0 --no-ignore-eos --concurrency $LEVELS --out "$OUT"
}
ours() {  # checkout label port
    (cd "$1" && INFERENCE_ENGINE=$ENGINE DEFAULT_MODEL=$MODEL_DIR MAX_BATCH_SIZE=$PARALLEL \
        CONTEXT_SIZE=$CONTEXT HOST=127.0.0.1 PORT=$3 LOG_LEVEL=WARNING \
        exec $PY run.py --mode prod >"/tmp/bench-$2.log" 2>&1) &
    local pid=$!
    if wait_up "http://127.0.0.1:$3/health" && wait_up "http://127.0.0.1:$3/v1/models/$(basename "$MODEL_DIR")/status"; then
        until curl -s "http://127.0.0.1:$3/v1/models/$(basename "$MODEL_DIR")/status" | grep -q '"state": *"ready"'; do sleep 1; done
        bench "http://127.0.0.1:$3/v1" "$(basename "$MODEL_DIR")" "$2"
    fi
    stop $pid
}
reference() {
    if [ "$ENGINE" = mlx ]; then
        $PY -m mlx_lm.server --model "$MODEL_DIR" --host 127.0.0.1 --port 8202 \
            --decode-concurrency "$PARALLEL" --prompt-concurrency "$PARALLEL" \
            >/tmp/bench-mlx_lm.server.log 2>&1 &
        local pid=$! label=mlx_lm.server model=default_model
        wait_up http://127.0.0.1:8202/v1/models
    else
        # `vllm serve` itself (its CLI reads the version of a package called vllm; the
        # CPU build's is vllm-cpu)
        $PY -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --host 127.0.0.1 --port 8202 \
            --served-model-name llama --max-num-seqs "$PARALLEL" --max-model-len $CONTEXT \
            --enable-prefix-caching --disable-log-stats >/tmp/bench-vllm-serve.log 2>&1 &
        local pid=$! label="vllm serve" model=llama
        wait_up http://127.0.0.1:8202/health
    fi
    bench http://127.0.0.1:8202/v1 "$model" "$label"
    stop $pid
}

for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    ours "$ROOT" vllm-obtain 8201
    reference
    if [ -n "${BASELINE:-}" ]; then ours "$BASELINE" "vllm-obtain (baseline)" 8203; fi
done
