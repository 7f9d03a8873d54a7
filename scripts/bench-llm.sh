#!/usr/bin/env bash
# Benchmark (not a test): the latency xenios-server adds to an LLM call. Release build (the server
# runs as its own process), Postgres
# and Redis from scripts/services.sh, loopback only, bounded time (a few minutes).
# Prints p50/p99 straight to a mock upstream vs through /api/v1/llm/complete (API key on,
# audit rows written, info JSON access log) at BENCH_RATES req/s (default "20 200 1000"), each
# latency from its scheduled send, failures counted, and streaming time to first token.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
scripts/services.sh
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
export ENVIRONMENT=development
cargo build --release -q -p xenios-server --bin xenios-server --example llm_overhead
exec timeout 600 target/release/examples/llm_overhead
