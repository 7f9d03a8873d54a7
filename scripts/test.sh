#!/usr/bin/env bash
# Runs the whole test suite: makes sure Postgres and Redis run (installing them if needed),
# then runs every test with cargo-nextest (or cargo test when nextest is missing).
# Extra arguments go to the test runner, e.g. `scripts/test.sh -E 'test(ready)'`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
scripts/services.sh
export TEST_PG_ADMIN_URL=${TEST_PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
# Real Python peers (Celery, Flower, OpenAI SDK) for the interoperability tests, and
# schemathesis for the contract test.
XENIOS_PYTHON=$(scripts/py-venv.sh)
export XENIOS_PYTHON
# The TypeScript client's pinned packages (npm ci under target/ts-client); the contract test
# (tests/tests/contract.rs) runs its node tests against a server it starts.
scripts/node-client.sh >/dev/null
# Build every target first, the binaries the job tests start included, with one feature set.
# (nextest builds test harnesses only; a test that then had to build xenios-cli itself would
# compile the workspace again, with other features, inside its own time.)
cargo build --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --all-targets --no-fail-fast "$@"
fi
