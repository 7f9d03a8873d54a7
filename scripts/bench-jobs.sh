#!/usr/bin/env bash
# Job queue benchmark: our producer and worker, then Celery 5.6.3 (pinned venv), on the same
# private Redis (a redis-server on a free port, removed afterwards). Prints the figures.
#   scripts/bench-jobs.sh [jobs for xenios, default 50000] [jobs for celery, default 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
N=${1:-50000}
NC=${2:-5000}
PY=$(scripts/py-venv.sh)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
cargo build -q --release -p xenios-worker -p xenios-cli --bin xenios-worker --bin xenios-cli --example bench
echo "== xenios ($N jobs) on redis 127.0.0.1:$port"
bench_db=${BENCH_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/xenios_bench?sslmode=disable}
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE xenios_bench" postgres 2>/dev/null || true
DATABASE_URL=$bench_db target/release/xenios-cli migrate >/dev/null
# Every run on the default bench database starts from empty tables: rows of earlier runs
# (45,000+ a run) slow the upserts and bring autovacuum into the measurement.
if [ -z "${BENCH_DATABASE_URL:-}" ]; then
  psql "$bench_db" -qc 'TRUNCATE ai_backend.job_queue_metadata, ai_backend.inference_logs' >/dev/null
fi
# Job rows go to the bench database (migrated above), as in production.
REDIS_URL="redis://127.0.0.1:$port/0" DATABASE_URL="$bench_db" \
  LOG_LEVEL=error target/release/examples/bench "$N"
echo "== celery 5.6.3 ($NC jobs) on the same redis"
XENIOS_TEST_BROKER="redis://127.0.0.1:$port/0" "$PY" tests/python/bench_celery.py "$NC"
