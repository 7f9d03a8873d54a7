#!/usr/bin/env bash
# Foundation figures: release build time (incremental unless CLEAN=1), time from exec to the
# first 200 from /health/ready (Postgres and Redis up, migrations excluded), and the idle RSS
# of the server. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
scripts/services.sh >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
if [ "${CLEAN:-0}" = 1 ]; then target=target/bench-clean; rm -rf "$target"; fi
t0=$(date +%s%N)
CARGO_TARGET_DIR=$target cargo build --release -q --bin xenios-server --bin xenios-worker --bin xenios-cli
t1=$(date +%s%N)
echo "release build: $(( (t1 - t0) / 1000000 )) ms ($([ "${CLEAN:-0}" = 1 ] && echo clean || echo incremental))"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runs=${RUNS:-5}
best=; total=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  ENVIRONMENT=development HOST=127.0.0.1 PORT=$port LOG_LEVEL=warn \
    DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres} \
    "$target/release/xenios-server" 2>/dev/null &
  pid=$!
  until curl -fs -o /dev/null "http://127.0.0.1:$port/health/ready"; do
    sleep 0.002
    [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 10000 ] || { echo "not ready in 10 s"; kill $pid; exit 1; }
  done
  ready=$(( ($(date +%s%N) - start) / 1000000 ))
  total=$((total + ready)); [ -z "$best" ] || [ "$ready" -lt "$best" ] && best=$ready
  if [ "$i" = "$runs" ]; then
    sleep 2  # let it settle idle
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "idle RSS after one readiness probe: $((rss / 1024)) MB ($rss kB)"
  fi
  kill -TERM $pid; wait $pid 2>/dev/null || true
done
echo "exec -> first 200 from /health/ready: best ${best} ms, mean $((total / runs)) ms over $runs runs"
