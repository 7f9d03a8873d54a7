#!/usr/bin/env bash
# Benchmark (not a test): the latency xenios-server adds to an LLM call, as a ratio against
# the upstream called straight, both measured in the same run.
#
# Three separate processes, loopback only, as in production: a fast mock OpenRouter (nginx,
# one worker process, a fixed completion), the real xenios-server (release build, API key on,
# an `inference_logs` row written per call, the production log configuration: info, JSON,
# one access-log line per request, to a file) and the load generator (oha, open loop at a
# fixed rate, each latency counted from its scheduled send: no coordinated omission). For
# each rate (BENCH_RATES, default "20 200 1000" req/s) oha first sends straight to the mock,
# then through `POST /api/v1/llm/complete`; the script prints p50/p99 of both, the
# difference (the added latency), the ratio, the failures (transport errors and non-2xx)
# and the server's CPU time per proxied call (user and system, and the share of the threads
# that serve HTTP: the rest is the audit and log writers, off the answer's path). A third
# leg goes through nginx as a plain reverse proxy to the same mock (a second nginx, one
# worker process of its own, upstream keep-alive, no auth, no log): the cost of one proxy
# hop on this machine in this run, the floor that the added latency is read against. The
# hop runs in a process of its own, as our server does: one nginx worker serving both the
# hop and the mock hands the request to itself without any process waking up, and at low
# rates the wake-ups are most of a hop's cost on these machines. Each leg runs BENCH_SECS
# (default 10) and at least 600 requests. Then the streaming time to first token
# (BENCH_STREAM=0 skips it), measured by the llm_overhead example against its own
# in-process mock.
#
#   scripts/bench-llm.sh
#   BENCH_RATES="20" BENCH_SECS=60 scripts/bench-llm.sh
#   BENCH_SERVER_WORKER_THREADS=1 scripts/bench-llm.sh   # the server's TOKIO_WORKER_THREADS
#   LOG_LEVEL=warn scripts/bench-llm.sh                  # without the access log
#
# Installs, when absent: nginx-light (Debian) and oha 1.16.0 (crates.io, built once into
# target/bench-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
source scripts/bench-lib.sh

RATES=${BENCH_RATES:-20 200 1000}
SECS=${BENCH_SECS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
KEY=bench-api-key-0123456789
OHA_VERSION=1.16.0
TOOLS=$PWD/target/bench-tools
OHA=$TOOLS/bin/oha

if ! [ -x /usr/sbin/nginx ] || ! command -v jq >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light jq >/dev/null
fi
if ! [ -x "$OHA" ] || ! "$OHA" --version | grep -qF "$OHA_VERSION"; then
  echo "building oha $OHA_VERSION into $TOOLS (once)"
  CARGO_TARGET_DIR=$TOOLS/build cargo install -q --locked oha --version "$OHA_VERSION" --root "$TOOLS"
fi
scripts/services.sh >/dev/null
PGPASSWORD=postgres psql -q -h 127.0.0.1 -U postgres -d postgres \
  -c 'CREATE DATABASE xenios_bench' >/dev/null 2>&1 || true
export DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/xenios_bench}
# Every run on the default bench database starts from empty tables (the server creates them
# on its first run, hence `|| true`).
if [ -z "${BENCH_DATABASE_URL:-}" ]; then
  psql "$DATABASE_URL" -qc 'TRUNCATE ai_backend.job_queue_metadata, ai_backend.inference_logs' \
    >/dev/null 2>&1 || true
fi
export REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release -q -p xenios-server --bin xenios-server --example llm_overhead

work=$(mktemp -d -t xenios-bench-llm-XXXXXX)
server=
cleanup() {
  [ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; }
  local pid
  for pid in "$work"/mock.pid "$work"/hop.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The mock upstream: one nginx worker answering every POST /chat/completions with the same
# OpenRouter-shaped completion, keep-alive for as long as the run.
MOCK_PORT=$(free_port)
HOP_PORT=$(free_port)
while [ "$HOP_PORT" = "$MOCK_PORT" ]; do HOP_PORT=$(free_port); done
COMPLETION='{"id":"gen-1","model":"bench/model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"cost":0.0001}}'
# An nginx of one worker process named $1 (its config, pid and error log in $work), serving
# the http block's servers given as $2, with keep-alive for as long as the run.
start_nginx() {
  cat > "$work/$1.conf" <<NGINX
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
$2
}
NGINX
  /usr/sbin/nginx -c "$work/$1.conf" -g 'daemon on;'
}
start_nginx mock "
  server {
    listen 127.0.0.1:$MOCK_PORT;
    location = /chat/completions { default_type application/json; return 200 '$COMPLETION'; }
  }"
# The floor: a plain reverse proxy to the mock, as a proxy hop with nothing else to do, in
# an nginx of its own.
start_nginx hop "
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$HOP_PORT;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
MOCK=http://127.0.0.1:$MOCK_PORT
HOP=http://127.0.0.1:$HOP_PORT

PORT=$(free_port)
SERVER=http://127.0.0.1:$PORT
SERVER_LOG=${BENCH_SERVER_LOG:-target/bench-llm-server.log}
env ENVIRONMENT=development HOST=127.0.0.1 PORT="$PORT" \
  OPENROUTER_API_KEY=sk-or-bench OPENROUTER_BASE_URL="$MOCK" \
  XENIOS_BACKEND_API_KEY=$KEY LLM_ROUTES=chat=bench/model \
  LOG_LEVEL="${LOG_LEVEL:-info}" LOG_FORMAT="${LOG_FORMAT:-json}" \
  RATE_LIMIT_PER_MINUTE=0 RUN_MIGRATIONS=true \
  ${BENCH_SERVER_WORKER_THREADS:+TOKIO_WORKER_THREADS=$BENCH_SERVER_WORKER_THREADS} \
  target/release/xenios-server >"$SERVER_LOG" 2>&1 </dev/null &
server=$!
for _ in $(seq 1 300); do
  curl -fsS "$SERVER/health/ready" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$SERVER_LOG"; exit 1; }
  sleep 0.1
done
curl -fsS "$SERVER/health/ready" >/dev/null || { echo "xenios-server is not ready (is Postgres up?)"; cat "$SERVER_LOG"; exit 1; }

BODY='{"task":"chat","messages":[{"role":"user","content":"hello"}]}'
check=$(curl -fsS -H "x-api-key: $KEY" -H 'content-type: application/json' -d "$BODY" "$SERVER/api/v1/llm/complete")
case $check in *'Hello world!'*) ;; *) echo "the server did not proxy to the mock: $check"; exit 1;; esac
curl -fsS -d "$BODY" "$MOCK/chat/completions" | grep -qF 'Hello world!' || { echo "the mock does not answer"; exit 1; }
curl -fsS -d "$BODY" "$HOP/chat/completions" | grep -qF 'Hello world!' || { echo "the nginx proxy hop does not answer"; exit 1; }

# oha at $1 req/s for $2 s against $3 (more arguments go to oha); sets p50/p99 (ms), ok and
# failed.
run_oha() {
  local rate=$1 secs=$2 url=$3 json; shift 3
  json=$("$OHA" --no-tui --output-format json -z "${secs}s" -q "$rate" --latency-correction \
    -c "$CONNECTIONS" -m POST -H 'content-type: application/json' -d "$BODY" "$@" "$url")
  p50=$(jq '.latencyPercentiles.p50 * 1000' <<<"$json")
  p99=$(jq '.latencyPercentiles.p99 * 1000' <<<"$json")
  ok=$(jq '[.statusCodeDistribution | to_entries[] | select(.key | startswith("2")) | .value] | add // 0' <<<"$json")
  all=$(jq '[.statusCodeDistribution | to_entries[] | .value] | add // 0' <<<"$json")
  # A request still in flight when the leg's time is up is cut by oha ("aborted due to
  # deadline"): that is the end of the run, not a failure.
  errors=$(jq '[.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0' <<<"$json")
  failed=$((all - ok + errors))
}
hz=$(getconf CLK_TCK)

echo "mock: nginx 1 worker; hop: a second nginx, 1 worker; server: $(nproc) cores, TOKIO_WORKER_THREADS=${BENCH_SERVER_WORKER_THREADS:-default}, LOG_LEVEL=${LOG_LEVEL:-info} LOG_FORMAT=${LOG_FORMAT:-json}; oha $OHA_VERSION, $CONNECTIONS connections, open loop"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "warming up..."
run_oha 500 2 "$MOCK/chat/completions"
run_oha 500 2 "$HOP/chat/completions"
run_oha 500 2 "$SERVER/api/v1/llm/complete" -H "x-api-key: $KEY"
for rate in $RATES; do
  secs=$(( SECS > (600 + rate - 1) / rate ? SECS : (600 + rate - 1) / rate ))
  run_oha "$rate" "$secs" "$MOCK/chat/completions"
  d50=$p50 d99=$p99 dok=$ok dfail=$failed
  run_oha "$rate" "$secs" "$HOP/chat/completions"
  h50=$p50 h99=$p99 hok=$ok hfail=$failed
  read -r u0 s0 < <(cpu_ticks_split "$server")
  t0=$(threads_cpu_ns "$server" xenios-http)
  run_oha "$rate" "$secs" "$SERVER/api/v1/llm/complete" -H "x-api-key: $KEY"
  read -r u1 s1 < <(cpu_ticks_split "$server")
  t1=$(threads_cpu_ns "$server" xenios-http)
  echo "complete: $rate req/s, $secs s a leg"
  awk -v d50="$d50" -v d99="$d99" -v g50="$p50" -v g99="$p99" -v dok="$dok" -v df="$dfail" \
    -v h50="$h50" -v h99="$h99" -v hok="$hok" -v hf="$hfail" \
    -v gok="$ok" -v gf="$failed" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" \
    -v serving=$((t1 - t0)) 'BEGIN {
    printf "  direct:    ok=%-6d failed=%-4d p50 %.3f ms  p99 %.3f ms\n", dok, df, d50, d99
    printf "  gateway:   ok=%-6d failed=%-4d p50 %.3f ms  p99 %.3f ms\n", gok, gf, g50, g99
    printf "  nginx hop: ok=%-6d failed=%-4d p50 %.3f ms  p99 %.3f ms\n", hok, hf, h50, h99
    printf "  added:   p50 %.3f ms  p99 %.3f ms  (gateway/direct: p50 %.2fx, p99 %.2fx)\n", g50 - d50, g99 - d99, g50 / d50, g99 / d99
    printf "  floor, added by a plain nginx proxy hop: p50 %.3f ms  p99 %.3f ms\n", h50 - d50, h99 - d99
    if (gok > 0) printf "  server CPU per proxied call: %.0f µs (user %.0f, system %.0f); of it the serving threads: %.0f µs\n", (u + s) / hz * 1e6 / gok, u / hz * 1e6 / gok, s / hz * 1e6 / gok, serving / 1000 / gok }'
done
echo "server RSS: $(ps -o rss= -p "$server" | awk '{printf "%.1f MB", $1/1024}')"
rows=$(psql "$DATABASE_URL" -tAc 'SELECT count(*) FROM ai_backend.inference_logs' 2>/dev/null || echo '?')
echo "inference_logs rows: $rows"

if [ "${BENCH_STREAM:-1}" != 0 ]; then
  echo "== streaming, time to first token (llm_overhead, in-process mock)"
  BENCH_RATES="" timeout 600 target/release/examples/llm_overhead
fi
