#!/usr/bin/env bash
# The real deploy, rollback and secrets playbooks with the real image, then Caddy's HTTPS from
# a local ACME server, all in a throwaway Docker engine in private network, mount and PID
# namespaces. Root only; run infra/tests/image-build.sh first (its image, in the engine's
# data-root under target/infra-engine, is tag A here; tag B is A plus a label).
#
#   sudo infra/tests/engine-deploy.sh
#
# Deploy (staging inventory, the example vault; DATABASE_URL points at a Postgres container
# beside the stack, as Supabase is beside a VPS):
#   deploy A: /health healthy, the running api and worker are image A (by image id);
#   deploy A again: changed=0; a job with a one-hour countdown is enqueued;
#   deploy B: image B, tags recorded; again: changed=0; rollback: image A, tags swapped;
#   secrets.yml (keeps the tag): changed=0; a rotated key with the previous one kept;
#   Redis restarted: the job is still there (AOF volume); Flower: 401 without its password,
#   lists the Rust worker with it; no port beyond 127.0.0.1.
# Caddy (the caddy role's Caddyfile, Caddy 2.11 as the role installs it, Debian's pebble as
#   the ACME server): a certificate for the API domain, /health over HTTPS, security headers,
#   /metrics 404, the first SSE delta of a slow stream well before its end, no API key in
#   the access log, Flower's site behind basic auth.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib/engine.sh
source "$root/infra/tests/lib/engine.sh"
repo=ghcr.io/xenios/ai-backend
commit="$(git -C "$root" rev-parse --short=12 HEAD)"
env=staging
api_key=example-backend-api-key-staging
domain=api.staging.xenios.example.com
flower_domain=flower.staging.xenios.example.com
flower_password=example-flower-password-staging


# --- inside the namespaces ---------------------------------------------------------------
playbook() {  # playbook NAME [ansible-playbook args...]
  local name="$1"
  shift
  (cd "$work/ansible" && ansible-playbook -i "inventory/$env.yml" \
      --vault-password-file vault-password.example \
      -e ansible_connection=local -e "ansible_python_interpreter=$bin/python" \
      -e ansible_become_method=ansible.builtin.su \
      -e "app_root=$work/app" -e app_owner=root -e app_group=root -e app_registry= \
      -e app_health_retries=60 -e app_health_delay=2 \
      -e '{"app_allow_example_secrets": true}' \
      -e "vault_database_url=$database_url" -e vault_openrouter_api_key= \
      -e '{"app_extra_settings": {"LLM_ROUTES": "chat=fake/slow-chat"}}' \
      "${worker_check[@]}" "$@" "playbooks/$name.yml") > "$work/$name.log" 2>&1
  local rc=$?
  grep -A14 '^fatal' "$work/$name.log" | head -30; grep -E '^xenios' "$work/$name.log" | tail -1
  return "$rc"
}
recap_changed() { grep -Eo 'changed=[0-9]+' "$work/$1.log" | tail -1 | cut -d= -f2; }
tags() { echo "deployed=$(cat "$work/app/.deployed-tag" 2>/dev/null) previous=$(cat "$work/app/.previous-tag" 2>/dev/null)"; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
running_image() { docker inspect -f '{{.Image}}' "xenios-$1-1"; }
healthy() { curl -fsS http://127.0.0.1:8000/health | grep -q '"status": *"healthy"'; }

deploy_runs() {  # deploy_runs TAG: deploy, healthy, api and worker run that image
  playbook deploy -e "app_image_tag=$1" && healthy \
    && [[ "$(running_image api)" == "$(image_id "$repo:$1")" ]] \
    && [[ "$(running_image worker)" == "$(image_id "$repo:$1")" ]] \
    && echo "$(tags); api+worker image $(running_image api)"
}
unchanged() { playbook "$@" && [[ "$(recap_changed "$1")" == 0 ]]; }

enqueue_delayed() {
  local body
  body="$(curl -fsS -H "X-API-Key: $api_key" -H 'Content-Type: application/json' \
    -d '{"task": "xenios.echo", "args": ["kept across redeploys"], "countdown": 3600}' \
    http://127.0.0.1:8000/api/v1/jobs)" || return 1
  job_id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$body")"
  echo "job $job_id"
}

redis_cli() { docker exec xenios-redis-1 redis-cli --no-auth-warning "$@"; }
job_in_redis() {  # the message is in a queue or reserved (unacked), not lost
  { redis_cli LRANGE default 0 -1; redis_cli HVALS unacked; } | grep -q "$job_id"
}
job_survives_redis_restart() {
  job_in_redis || { echo "job $job_id not in Redis before the restart"; return 1; }
  docker restart xenios-redis-1 >/dev/null
  local i
  for i in $(seq 30); do redis_cli ping 2>/dev/null | grep -q PONG && break; sleep 1; done
  redis_cli CONFIG GET appendonly | grep -qx yes || { echo "AOF is off"; return 1; }
  job_in_redis || { echo "job $job_id lost with the Redis restart"; return 1; }
  for i in $(seq 30); do healthy && break; sleep 1; done
  curl -fsS -H "X-API-Key: $api_key" "http://127.0.0.1:8000/api/v1/jobs/$job_id"
}

flower_auth() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5555/api/workers)"
  [[ "$code" == 401 ]] || { echo "flower without a password: HTTP $code"; return 1; }
  local i workers=""
  for i in $(seq 30); do
    workers="$(curl -fsS -u "flower:$flower_password" 'http://127.0.0.1:5555/api/workers?refresh=1')" \
      && python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) else 1)' "$workers" && break
    sleep 2
  done
  echo "workers: $workers" | cut -c1-300
  python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) else 1)' "$workers"
}

rotated_key() {
  playbook secrets -e vault_backend_api_key=rotated-backend-api-key-0123 \
    -e "vault_backend_api_key_previous=$api_key" || return 1
  grep -qx "XENIOS_BACKEND_API_KEY_PREVIOUS='$api_key'" "$work/app/.env" \
    && docker exec xenios-api-1 printenv XENIOS_BACKEND_API_KEY | grep -qx rotated-backend-api-key-0123 \
    && [[ "$(running_image api)" == "$(image_id "$repo:e2e-a")" ]] \
    && curl -fsS -H "X-API-Key: rotated-backend-api-key-0123" http://127.0.0.1:8000/api/v1/status >/dev/null
  local rc=$?
  playbook secrets >/dev/null  # back to the vault's key
  return "$rc"
}

local_ports_only() {
  docker ps --filter label=com.docker.compose.project=xenios --format '{{.Names}} {{.Ports}}'
  ! docker ps --filter label=com.docker.compose.project=xenios --format '{{.Ports}}' | grep -E '0\.0\.0\.0|:::'
}

# --- Caddy and pebble --------------------------------------------------------------------
start_pebble() {
  local dir="$work/pebble"
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=e2e-listener-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/csr.pem" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/csr.pem" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 1 -extfile "$dir/ext.cnf" -out "$dir/cert.pem" 2>/dev/null
  cat > "$dir/config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$dir/cert.pem", "privateKey": "$dir/key.pem",
  "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$dir/config.json" > "$dir/pebble.log" 2>&1 &
  pebble_pid=$!
  local i
  for i in $(seq 30); do curl -fsS --cacert "$dir/ca.pem" https://127.0.0.1:14000/dir >/dev/null 2>&1 && return 0; sleep 1; done
  cat "$dir/pebble.log"; return 1
}

start_caddy() {
  local out="$work/caddy"
  mkdir -p "$out/log"
  (cd "$work/ansible" && ansible-playbook -i "inventory/$env.yml" --vault-password-file vault-password.example \
     -e ansible_connection=local -e "ansible_python_interpreter=$bin/python" \
     -e "app_root=$work/render-app" -e app_owner=root -e app_group=root -e app_image_tag=e2e-a \
     -e '{"app_allow_example_secrets": true}' -e "vault_database_url=$database_url" \
     -e "caddy_config_path=$out/Caddyfile" -e "caddy_access_log=$out/log/access.log" \
     -e "caddy_binary=$bin/caddy" -e caddy_owner=root -e caddy_group=root \
     -e caddy_acme_ca=https://127.0.0.1:14000/dir -e "caddy_acme_ca_root=$work/pebble/ca.pem" \
     -e '{"caddy_manage_service": false}' \
     "$root/infra/tests/render.yml") > "$out/render.log" 2>&1 || { tail -20 "$out/render.log"; return 1; }
  XDG_DATA_HOME="$out/data" XDG_CONFIG_HOME="$out/config" HOME="$out" \
    caddy run --adapter caddyfile --config "$out/Caddyfile" > "$out/caddy.log" 2>&1 &
  caddy_pid=$!
  curl -fsS --cacert "$work/pebble/ca.pem" https://127.0.0.1:15000/roots/0 > "$out/acme-root.pem" || return 1
  local i
  for i in $(seq 60); do
    curl -fsS --cacert "$out/acme-root.pem" --resolve "$domain:443:127.0.0.1" "https://$domain/health" >/dev/null 2>&1 && break
    sleep 1
  done
  # Pebble makes a fresh root at every start; the issued chain must lead to it.
  echo | openssl s_client -connect 127.0.0.1:443 -servername "$domain" 2>/dev/null \
    | openssl x509 -noout -issuer -subject -ext subjectAltName
}

https() { curl -sS --cacert "$work/caddy/acme-root.pem" --resolve "$1:443:127.0.0.1" "${@:2}"; }

caddy_health() {
  https "$domain" -f "https://$domain/health" | grep -q '"status": *"healthy"'
}
caddy_headers() {
  local headers
  headers="$(https "$domain" -f -D - -o /dev/null "https://$domain/health")" || return 1
  echo "$headers"
  grep -qi '^strict-transport-security: max-age=31536000' <<<"$headers" \
    && grep -qi '^x-content-type-options: nosniff' <<<"$headers" \
    && grep -qi '^x-frame-options: DENY' <<<"$headers" \
    && ! grep -qi '^server:' <<<"$headers"
}
caddy_metrics() {
  local code
  code="$(https "$domain" -o /dev/null -w '%{http_code}' -H "X-API-Key: $api_key" "https://$domain/metrics")"
  [[ "$code" == 404 ]] || { echo "/metrics through Caddy: HTTP $code"; return 1; }
  # ...while the api itself still serves it on the host.
  curl -fsS -o /dev/null -H "X-API-Key: $api_key" http://127.0.0.1:8000/metrics
}
caddy_sse() {
  python3 - "$domain" "$work/caddy/acme-root.pem" "$api_key" <<'PY'
import http.client, json, ssl, sys, time
domain, cafile, key = sys.argv[1:4]
context = ssl.create_default_context(cafile=cafile)
class Conn(http.client.HTTPSConnection):
    def connect(self):
        import socket
        sock = socket.create_connection(("127.0.0.1", 443), 10)
        self.sock = context.wrap_socket(sock, server_hostname=domain)
conn = Conn(domain, 443, context=context, timeout=60)
words = " ".join(f"w{i}" for i in range(40))
body = json.dumps({"task": "chat", "messages": [{"role": "user", "content": words}]})
start = time.monotonic()
conn.request("POST", "/api/v1/llm/stream", body, {"X-API-Key": key, "Content-Type": "application/json"})
response = conn.getresponse()
assert response.status == 200, (response.status, response.read()[:300])
first = end = None
while True:
    line = response.readline()
    if not line:
        break
    if line.startswith(b"event: delta") and first is None:
        first = time.monotonic() - start
    if line.startswith(b"event: done") or line.startswith(b"event: error"):
        end = time.monotonic() - start
        print(line.decode().strip())
        break
print(f"first delta after {first:.2f}s, stream ended after {end:.2f}s")
# The slow fake model waits 2 s, then sends a token every 50 ms: 40 tokens take ~2 s more.
# Buffered, the first delta would arrive with the last one.
assert first is not None and end is not None and end - first > 1.0, "the stream was buffered"
PY
}
caddy_log_redacted() {
  local log="$work/caddy/log/access.log"
  [[ -s "$log" ]] || { echo "no access log"; return 1; }
  grep -q '"uri":"/metrics"' "$log" || { echo "the /metrics request is not in the log"; return 1; }
  ! grep -q -e "$api_key" -e 'X-Api-Key' "$log" || { echo "the API key is in the access log"; return 1; }
}
caddy_flower() {
  local code
  code="$(https "$flower_domain" -o /dev/null -w '%{http_code}' "https://$flower_domain/")"
  [[ "$code" == 401 ]] || { echo "flower site without a password: HTTP $code"; return 1; }
  code="$(https "$flower_domain" -o /dev/null -w '%{http_code}' -u "flower:$flower_password" "https://$flower_domain/api/workers")"
  [[ "$code" == 200 ]] || { echo "flower site with the password: HTTP $code"; return 1; }
}

inside() {
  trap 'kill ${caddy_pid:-} ${pebble_pid:-} 2>/dev/null; docker compose -p xenios --project-directory "$work/app" down -v --timeout 5 >/dev/null 2>&1; engine_stop' EXIT
  engine_start
  import_base_images
  # The image image-build.sh built last (of this commit, or the newest one).
  built="$repo:$commit"
  docker image inspect "$built" >/dev/null 2>&1 \
    || built="$repo:$(docker images "$repo" --format '{{.Tag}}' | grep -v '^e2e-' | head -n 1)"
  docker image inspect "$built" >/dev/null 2>&1 \
    || { echo "engine-deploy: no $repo image in the engine: run infra/tests/image-build.sh first"; return 1; }
  echo "image A: $built"
  docker tag "$built" "$repo:e2e-a"
  printf 'FROM %s\nLABEL org.opencontainers.image.version=e2e-b\n' "$built" \
    | DOCKER_BUILDKIT=0 docker build -q -t "$repo:e2e-b" - >/dev/null
  worker_check=()
  if ! docker run --rm "$repo:e2e-a" xenios-worker --help 2>&1 | grep -q -- '--check'; then
    failed=$((failed + 1))
    echo "FAIL  the image's xenios-worker has no --check (issue 13): workers checked by process instead"
    worker_check=(-e '{"app_worker_healthcheck": ["CMD-SHELL", "kill -0 1"]}')
  fi

  # Postgres beside the stack (Supabase's place); reached through the default bridge's gateway.
  docker run -d --name e2e-postgres -p 5432:5432 -e POSTGRES_PASSWORD=e2e-db-password \
    -e POSTGRES_DB=xenios postgres:16-bookworm >/dev/null
  database_url="postgres://postgres:e2e-db-password@$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}'):5432/xenios"
  local i
  for i in $(seq 30); do docker exec e2e-postgres pg_isready -q && break; sleep 1; done

  check "deploy A: healthy, api and worker run image A" deploy_runs e2e-a
  check "deploy A again: changed=0" unchanged deploy -e app_image_tag=e2e-a
  check "/api/v1/status reports the commit the image was built from" eval \
    'curl -fsS -H "X-API-Key: $api_key" http://127.0.0.1:8000/api/v1/status | tee /dev/stderr \
      | grep -q "\"git_commit\": *\"${built##*:}\""'
  check "enqueue a job with a one-hour countdown" enqueue_delayed
  check "deploy B: healthy, image B, tags deployed=B previous=A" \
    eval 'deploy_runs e2e-b && [[ "$(tags)" == "deployed=e2e-b previous=e2e-a" ]]'
  check "deploy B again: changed=0" unchanged deploy -e app_image_tag=e2e-b
  check "rollback: image A again, tags swapped" eval 'playbook rollback && healthy \
    && [[ "$(running_image api)" == "$(image_id "$repo:e2e-a")" ]] \
    && [[ "$(running_image worker)" == "$(image_id "$repo:e2e-a")" ]] \
    && [[ "$(tags)" == "deployed=e2e-a previous=e2e-b" ]]'
  check "secrets.yml after the rollback: changed=0" unchanged secrets
  check "rotated API key live, previous key kept in .env, still A" rotated_key
  check "the job survives the redeploys and a Redis restart (AOF)" job_survives_redis_restart
  check "Flower: 401 without a password, lists the Rust worker with it" flower_auth
  check "no port published beyond 127.0.0.1" local_ports_only
  check "pebble (ACME) starts" start_pebble
  check "Caddy obtains a certificate from pebble" start_caddy
  check "HTTPS /health through Caddy" caddy_health
  check "security headers, no Server header" caddy_headers
  check "/metrics: 404 through Caddy" caddy_metrics
  check "SSE: first delta long before the stream ends" caddy_sse
  check "access log: JSON, no API key" caddy_log_redacted
  check "Flower site: basic auth" caddy_flower
  echo "engine-deploy: $passed passed, $failed failed"
  ((failed == 0)) && touch "$work/passed"
  return 0
}

if [[ "${1:-}" == --inside ]]; then
  work="$2"
  export ANSIBLE_HOME="$work/ansible-home" ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" \
    ANSIBLE_REMOTE_TEMP="$work/ansible-remote-tmp" ANSIBLE_NOCOLOR=1
  inside
  exit 0
fi

# --- outside -----------------------------------------------------------------------------
start=$SECONDS
engine_prepare
base_rootfs_all
command -v pebble >/dev/null || { echo "engine-deploy: apt-get install pebble" >&2; exit 1; }
work="$(mktemp -d "$engine_base/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A copy of infra/ansible with the example vaults (the real ones may be rekeyed).
cp -r "$root/infra/ansible" "$work/ansible"
cp "$root/infra/ansible/examples/vault-$env.yml" "$work/ansible/inventory/group_vars/$env/vault.yml"
engine_enter "$0" "$work" || true
if [[ -f "$work/passed" ]]; then
  echo "engine-deploy: ok ($((SECONDS - start))s)"
else
  echo "engine-deploy: failed ($((SECONDS - start))s)"
  exit 1
fi
