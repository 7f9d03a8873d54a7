#!/usr/bin/env bash
# Job queue benchmark: our producer and worker, then Celery 5.6.3 (pinned venv), on the same
# private Redis (a redis-server on a free port, removed afterwards), the same number of jobs
# and the same rules (workers started and warmed up before the clock, clocks stopped when
# every result is stored; see xenios-worker/examples/bench.rs and tests/python/bench_celery.py).
# Prints each side's figures, then ours as a ratio of Celery's measured in this run.
#   scripts/bench-jobs.sh [jobs, default 20000]
#   BENCH_TASK_EVENTS=1 scripts/bench-jobs.sh   # both workers send task events (as for Flower)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
N=${1:-20000}
PY=$(scripts/py-venv.sh)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
out=$(mktemp)
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
cargo build -q --release -p xenios-worker -p xenios-cli --bin xenios-worker --bin xenios-cli --example bench
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
# Both workers drain with task events off (Celery's default), or both with them on:
# BENCH_TASK_EVENTS=1 (our JOB_TASK_EVENTS=true, Celery's -E, as when Flower watches).
case ${BENCH_TASK_EVENTS:-0} in 1|true) events=on;; *) events=off;; esac
echo "task events during the drain, both sides: $events"
echo "== xenios ($N jobs) on redis 127.0.0.1:$port"
bench_db=${BENCH_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/xenios_bench?sslmode=disable}
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE xenios_bench" postgres 2>/dev/null || true
DATABASE_URL=$bench_db target/release/xenios-cli migrate >/dev/null
# Every run on the default bench database starts from empty tables: rows of earlier runs
# slow the upserts and bring autovacuum into the measurement.
if [ -z "${BENCH_DATABASE_URL:-}" ]; then
  psql "$bench_db" -qc 'TRUNCATE ai_backend.job_queue_metadata, ai_backend.inference_logs' >/dev/null
fi
# Job rows go to the bench database (migrated above), as in production.
REDIS_URL="redis://127.0.0.1:$port/0" DATABASE_URL="$bench_db" \
  LOG_LEVEL=error target/release/examples/bench "$N" | tee -a "$out"
echo "== celery 5.6.3 ($N jobs) on the same redis"
XENIOS_TEST_BROKER="redis://127.0.0.1:$port/0" "$PY" tests/python/bench_celery.py "$N" | tee -a "$out"
echo "== ratios (ours / celery, same run, same redis, $N jobs each)"
result() { awk -F= -v k="RESULT $1" '$1 == k {print $2}' "$out"; }
awk -v a="$(result xenios_enqueue)" -v b="$(result celery_enqueue)" \
  'BEGIN { printf "enqueue, one call per job: %.1fx celery send_task\n", a / b }'
awk -v a="$(result xenios_drain)" -v b="$(result celery_drain)" \
  'BEGIN { printf "drain, results stored: %.1fx celery best pool\n", a / b }'
awk -v a="$(result xenios_drain_prefetch16)" -v b="$(result celery_drain_prefetch16)" \
  'BEGIN { printf "shown apart, both at --prefetch-multiplier 16: %.1fx\n", a / b }'
