#!/usr/bin/env bash
# What the load-balanced entry point costs: the same instance benchmarked
# directly, through this service's entry point (INFERENCE_MODE=load_balance
# with one local instance) and through nginx (the reference reverse proxy),
# one after the other, twice, on one machine.
#
#   NGINX=/usr/sbin/nginx bash benchmarks/lb_overhead.sh results.jsonl
#   python benchmarks/summarize.py results.jsonl
#
# Optional: LEVELS ("1 4 8"), NUM_PROMPTS (24), MAX_TOKENS (64), ROUNDS (2),
# MODEL (SmolLM2-135M-Instruct), THREADS (2), BATCH (8).
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: lb_overhead.sh RESULTS.jsonl}
PY=.venv/bin/python
LEVELS=${LEVELS:-"1 4 8"}
NUM_PROMPTS=${NUM_PROMPTS:-24}
MAX_TOKENS=${MAX_TOKENS:-64}
ROUNDS=${ROUNDS:-2}
MODEL=${MODEL:-SmolLM2-135M-Instruct}
ENTRY=8201 INSTANCE=8202 PROXY=8203
TMP=$(mktemp -d)

wait_up() { for _ in $(seq 1 240); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

INFERENCE_MODE=load_balance CLUSTER_INSTANCES=1 CLUSTER_BASE_PORT=$INSTANCE \
    HEALTH_CHECK_INTERVAL=30 DEFAULT_MODEL=$MODEL MAX_CPU_THREADS=${THREADS:-2} \
    MAX_BATCH_SIZE=${BATCH:-8} CONTEXT_SIZE=512 HOST=127.0.0.1 PORT=$ENTRY LOG_LEVEL=WARNING \
    LOG_DIR=$TMP/logs METRICS_INTERVAL=0 $PY run.py --mode prod >"$TMP/entry.log" 2>&1 &
entry=$!
cat >"$TMP/nginx.conf" <<EOF
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/body;
    upstream instance { server 127.0.0.1:$INSTANCE; keepalive 32; }
    server {
        listen 127.0.0.1:$PROXY;
        location / {
            proxy_pass http://instance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
"${NGINX:?set NGINX to an nginx binary}" -c "$TMP/nginx.conf" &
nginx=$!
trap 'kill $nginx 2>/dev/null; kill $entry 2>/dev/null; wait' EXIT

wait_up http://127.0.0.1:$ENTRY/health && wait_up http://127.0.0.1:$PROXY/health || exit 1
for round in $(seq 1 "$ROUNDS"); do
    for target in "entry-point $ENTRY" "direct $INSTANCE" "nginx $PROXY"; do
        set -- $target
        $PY benchmarks/bench_serving.py --base-url "http://127.0.0.1:$2/v1" --model "$MODEL" \
            --label "$1" --num-prompts "$NUM_PROMPTS" --prompt-words 90 \
            --max-tokens "$MAX_TOKENS" --concurrency $LEVELS --out "$OUT"
    done
done
