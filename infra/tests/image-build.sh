#!/usr/bin/env bash
# Build the real image from infra/docker/Dockerfile, as written, in a throwaway Docker engine
# (private network, mount and PID namespaces), then check it: non-root, ENVIRONMENT=production
# by default, and the git commit in /api/v1/status of the running server. Root only; slow
# the first time (the whole workspace in release mode), cached afterwards.
#
#   sudo infra/tests/image-build.sh            # tags ghcr.io/xenios/ai-backend:<commit>
#   IMAGE_TAGS="e2e-a e2e-b" ...               # extra tags (infra/tests/e2e.sh deploys them)
#
# No image registry answers here: the base images the Dockerfile names (debian:bookworm-slim,
# rust:<RUST_VERSION>-slim-bookworm) are made from Debian packages and this machine's Rust
# toolchain (tests/lib/engine.sh). Crates and Debian packages come from their registries
# through tests/registry-proxy.py (`docker build --network host` + the standard proxy build
# args, which Docker keeps out of the image).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=lib/engine.sh
source "$root/infra/tests/lib/engine.sh"
repo=ghcr.io/xenios/ai-backend
commit="$(git -C "$root" rev-parse --short=12 HEAD)"
api_key=image-check-api-key-0123456789

fail() { echo "image-build: FAIL $*" >&2; exit 1; }

inside() {
  trap engine_stop EXIT
  engine_start
  import_base_images

  log "build: $repo:$commit (GIT_COMMIT=$commit)"
  local start=$SECONDS
  (cd "$root" && DOCKER_BUILDKIT=0 docker build --network host \
      --build-arg "http_proxy=$proxy_url" --build-arg "https_proxy=$proxy_url" \
      --build-arg "HTTP_PROXY=$proxy_url" --build-arg "HTTPS_PROXY=$proxy_url" \
      --build-arg "GIT_COMMIT=$commit" \
      -f infra/docker/Dockerfile --target runtime -t "$repo:$commit" .) > "$engine_base/build.log" 2>&1 \
    || { tail -40 "$engine_base/build.log"; fail "docker build (log: $engine_base/build.log)"; }
  log "build: done in $((SECONDS - start))s"
  local tag
  for tag in ${IMAGE_TAGS:-}; do docker tag "$repo:$commit" "$repo:$tag"; done
  docker images "$repo" --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' >&2

  [[ "$(docker run --rm --entrypoint id "$repo:$commit" -u)" == 10001 ]] || fail "the image does not run as uid 10001"
  docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$repo:$commit" | grep -qx ENVIRONMENT=production \
    || fail "the image does not set ENVIRONMENT=production"
  # Production by default: the server refuses to start with development settings.
  local out
  if out="$(docker run --rm -e XENIOS_BACKEND_API_KEY=dev-api-key "$repo:$commit" xenios-server 2>&1)"; then
    fail "the server started with the development key and no ENVIRONMENT"
  fi
  grep -q 'production' <<<"$out" || fail "no production error from a bare start: $out"

  # The running server reports the commit (staging: the fake LLM, no provider keys).
  docker network create image-check >/dev/null
  docker run -d --name image-check-redis --network image-check redis:7.4-bookworm \
    redis-server --save '' --appendonly no >/dev/null
  docker run -d --name image-check-db --network image-check -e POSTGRES_PASSWORD=check \
    -e POSTGRES_DB=xenios postgres:16-bookworm >/dev/null
  local i
  for i in $(seq 60); do docker exec image-check-db pg_isready -q 2>/dev/null && break; sleep 1; done
  docker run -d --name image-check-api --network image-check -p 127.0.0.1:18000:8000 \
    -e ENVIRONMENT=staging -e XENIOS_BACKEND_API_KEY=$api_key -e RUN_MIGRATIONS=true \
    -e DATABASE_URL=postgres://postgres:check@image-check-db:5432/xenios \
    -e REDIS_URL=redis://image-check-redis:6379/0 -e SUPABASE_JWT_SECRET=image-check-jwt-secret-0123456789abcdef \
    -e SUPABASE_URL=http://supabase.invalid "$repo:$commit" >/dev/null
  local status=""
  for i in $(seq 60); do
    status="$(curl -fsS -H "X-API-Key: $api_key" http://127.0.0.1:18000/api/v1/status 2>/dev/null)" && break
    sleep 1
  done
  [[ -n "$status" ]] || { docker logs image-check-api 2>&1 | tail -20; fail "/api/v1/status did not answer"; }
  python3 -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["git_commit"]==sys.argv[2], s' "$status" "$commit" \
    || fail "/api/v1/status reports another commit: $status"
  # `docker top` needs a PID column in its ps options; the user is the second column.
  [[ "$(docker top image-check-api -eo pid,user | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')" == "10001 " ]] \
    || fail "processes in the api container not all uid 10001: $(docker top image-check-api -eo pid,user,comm)"
  echo "image-build: ok $repo:$commit non-root, ENVIRONMENT=production, /api/v1/status git_commit=$commit"
  docker rm -f image-check-api image-check-db image-check-redis >/dev/null
  docker network rm image-check >/dev/null
  touch "$engine_base/image-built"
}

if [[ "${1:-}" == --inside ]]; then
  inside
  exit 0
fi

start=$SECONDS
engine_prepare
base_rootfs_all
rm -f "$engine_base/image-built"
engine_enter "$0" || true
if [[ -f "$engine_base/image-built" ]]; then
  echo "image-build: 1 passed, 0 failed ($((SECONDS - start))s)"
else
  echo "image-build: 0 passed, 1 failed ($((SECONDS - start))s)"
  exit 1
fi
