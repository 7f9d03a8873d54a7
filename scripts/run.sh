#!/usr/bin/env bash
# Runs the backend locally: makes sure Postgres and Redis run, then starts xenios-server on
# http://localhost:8000 with development defaults (fake LLM when OPENROUTER_API_KEY is unset,
# API key `xenios-dev-key` unless XENIOS_BACKEND_API_KEY is set). Variables from .env apply.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
scripts/services.sh --dev-db
export DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/xenios}
export RUN_MIGRATIONS=${RUN_MIGRATIONS:-true}
exec cargo run --release --bin xenios-server
