#!/usr/bin/env bash
# `docker compose up` of the development stack from the repository root (compose.yaml), in a
# throwaway engine in private namespaces, then: /health, Flower's API lists the Rust worker,
# a job enqueued through the API is SUCCESS in Flower, and an edited source file restarts the
# api (time measured). Root only; slow the first time (the dev image, then a debug build of
# the workspace inside the containers, into the cargo-target volume kept in the engine).
#
#   sudo infra/tests/dev-stack.sh
#
# Base images come from tests/lib/engine.sh; infra/tests/compose.e2e.yml only adds the
# registry proxy (cargo inside the containers) and a known API key.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib/engine.sh
source "$root/infra/tests/lib/engine.sh"
api_key=dev-stack-e2e-api-key
edited="$root/xenios-server/src/lib.rs"


compose() { (cd "$root" && docker compose -f compose.yaml -f infra/tests/compose.e2e.yml "$@"); }
status() { curl -fsS -H "X-API-Key: $api_key" http://127.0.0.1:8000/api/v1/status; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

up() {
  DOCKER_BUILDKIT=0 compose build > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; return 1; }
  # A fresh database, as on a new machine (the build caches in the other volumes stay).
  docker volume rm -f xenios-dev_postgres-data >/dev/null || true
  compose up -d
  # The first debug build of the workspace runs inside the containers: up to the 15 minutes
  # the healthchecks allow.
  local i
  for i in $(seq 900); do
    curl -fsS http://127.0.0.1:8000/health 2>/dev/null | grep -q '"status": *"healthy"' && break
    sleep 1
  done
  curl -fsS http://127.0.0.1:8000/health
  # Healthy is only "the process serves"; ready means Postgres and Redis answer it too.
  for i in $(seq 60); do
    curl -fsS http://127.0.0.1:8000/health/ready >/dev/null 2>&1 && break
    sleep 1
  done
  curl -sS http://127.0.0.1:8000/health/ready
  curl -fsS -o /dev/null http://127.0.0.1:8000/health/ready
}

flower_lists_worker() {
  local i workers=""
  for i in $(seq 120); do
    workers="$(curl -fsS 'http://127.0.0.1:5555/api/workers?refresh=1' 2>/dev/null)" \
      && python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) else 1)' "$workers" && break
    sleep 2
  done
  echo "$workers" | cut -c1-400
  python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) else 1)' "$workers" && return 0
  curl -sS -i 'http://127.0.0.1:5555/api/workers' 2>&1 | head -5
  compose logs --no-color --tail 30 flower worker 2>&1 | cut -c1-300
  return 1
}

job_success_in_flower() {
  local body id i info=""
  body="$(curl -sS -H "X-API-Key: $api_key" -H 'Content-Type: application/json' \
    -d '{"task": "xenios.echo", "args": ["dev stack"]}' -w '\n%{http_code}' http://127.0.0.1:8000/api/v1/jobs)"
  if [[ "${body##*$'\n'}" != 202 && "${body##*$'\n'}" != 200 ]]; then
    echo "POST /api/v1/jobs: $body"
    compose logs --no-color --tail 40 api 2>&1 | cut -c1-300
    return 1
  fi
  body="${body%$'\n'*}"
  id="$(field "$body" id)"
  for i in $(seq 60); do
    info="$(curl -fsS "http://127.0.0.1:5555/api/task/info/$id" 2>/dev/null)" \
      && [[ "$(field "$info" state)" == SUCCESS ]] && break
    sleep 1
  done
  echo "task $id: $info" | cut -c1-400
  [[ "$(field "$info" state)" == SUCCESS ]]
}

reload_on_edit() {
  local before after i start
  before="$(field "$(status)" uptime_secs)"
  cp "$edited" "$work/lib.rs.orig"
  printf '\n// infra/tests/dev-stack.sh: a source edit the api must pick up\n' >> "$edited"
  start=$SECONDS
  for i in $(seq 600); do
    after="$(status 2>/dev/null)" && [[ "$(field "$after" uptime_secs)" -lt $((before + SECONDS - start)) ]] && break
    sleep 1
  done
  cp "$work/lib.rs.orig" "$edited"
  echo "the api restarted $((SECONDS - start))s after the edit"
  echo "$((SECONDS - start))" > "$work/reload-seconds"
  [[ -n "$after" ]] && [[ "$(field "$after" uptime_secs)" -lt $((before + SECONDS - start)) ]]
}

inside() {
  trap 'if [[ -f "$work/lib.rs.orig" ]]; then cp "$work/lib.rs.orig" "$edited"; fi; compose down --timeout 5 >/dev/null 2>&1; engine_stop' EXIT
  engine_start
  import_base_images
  check "docker compose up from the repository root: /health, /health/ready" up
  check "services: api, worker, redis, flower, postgres running" \
    eval '[[ "$(compose ps --services --status running | sort | tr "\n" " ")" == "api flower postgres redis worker " ]]'
  check "Flower's API lists the Rust worker" flower_lists_worker
  check "a job enqueued through the API is SUCCESS in Flower" job_success_in_flower
  check "editing a source file restarts the api" reload_on_edit
  echo "dev-stack: $passed passed, $failed failed"
  ((failed == 0)) && touch "$work/passed"
  return 0
}

if [[ "${1:-}" == --inside ]]; then
  work="$2"
  inside
  exit 0
fi

start=$SECONDS
engine_prepare
base_rootfs_all
work="$(mktemp -d "$engine_base/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
engine_enter "$0" "$work" || true
[[ -f "$work/passed" ]] || { echo "dev-stack: failed ($((SECONDS - start))s)"; exit 1; }
echo "dev-stack: ok ($((SECONDS - start))s)"
