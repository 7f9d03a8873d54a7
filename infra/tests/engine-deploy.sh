#!/usr/bin/env bash
# Run the real deploy, rollback and secrets playbooks (the `app` role: render, compose up
# --wait, /health, tag records, prune) against a throwaway Docker engine, in private
# network, mount and PID namespaces. Slow (a few minutes), root only, not part of CI.
#
#   sudo infra/tests/engine-deploy.sh
#
# No registry is reachable offline, so the backend, redis and flower images are stand-ins
# built locally (infra/tests/engine-stub) on top of the chroot that infra/tests/chroot-roles.sh
# leaves in target/infra-chroot/rootfs (run that first). Debian's docker.io, containerd, runc
# and iptables are fetched with `apt-get download` and unpacked under target/infra-engine; the
# engine's bridge and iptables rules live in the throwaway network namespace only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
base="$root/target/infra-engine"
rootfs="$root/target/infra-chroot/rootfs"
bin="${INFRA_VENV:-$root/target/infra-venv}/bin"
repo=ghcr.io/xenios/xenios-backend

fail() { echo "engine-deploy: FAIL $*"; exit 1; }

# --- inside the namespaces -------------------------------------------------------------
playbook() {  # playbook NAME [ansible-playbook args...]
  local name="$1"
  shift
  (cd "$work/ansible" && ansible-playbook -i inventory/production.yml \
      --vault-password-file vault-password.example \
      -e ansible_connection=local -e "ansible_python_interpreter=$bin/python" \
      -e ansible_become_method=ansible.builtin.su \
      -e "app_root=$work/app" -e app_owner=root -e app_group=root -e app_registry= \
      -e app_health_retries=20 -e app_health_delay=2 \
      -e '{"app_allow_example_secrets": true}' \
      "$@" "playbooks/$name.yml") | tee "$work/last.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || fail "$name.yml failed"
}

recap_changed() { grep -Eo 'changed=[0-9]+' "$work/last.log" | tail -1 | cut -d= -f2; }
api() { curl -fsS http://127.0.0.1:8000/health; }
tags() { echo "deployed=$(cat "$work/app/.deployed-tag" 2>/dev/null) previous=$(cat "$work/app/.previous-tag" 2>/dev/null)"; }

inside() {
  ip link set lo up
  export DOCKER_HOST="unix://$base/docker.sock" DOCKER_CONFIG="$work/docker-config" DOCKER_BUILDKIT=0
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  dockerd --data-root "$base/data" --exec-root "$base/exec" --pidfile "$base/dockerd.pid" \
    -H "$DOCKER_HOST" >"$work/dockerd.log" 2>&1 &
  local dockerd_pid=$! i
  # shellcheck disable=SC2064
  trap "docker compose -p xenios --project-directory '$work/app' down -v --timeout 5 >/dev/null 2>&1; kill $dockerd_pid; wait $dockerd_pid" EXIT
  for i in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version --format 'engine {{.Server.Version}}' || { tail -30 "$work/dockerd.log"; fail "dockerd did not start"; }

  echo "--- stand-in images"
  if ! docker image inspect xenios-stub-base >/dev/null 2>&1; then
    tar -C "$rootfs" -c --exclude=./proc/* --exclude=./var/cache/apt/* --exclude=./var/lib/apt/lists/* \
      --exclude=./usr/share/doc/* --exclude=./usr/share/man/* --exclude=./usr/share/locale/* . \
      | docker import - xenios-stub-base >/dev/null
  fi
  docker build -q --build-arg STUB_VERSION=v1 -t "$repo:v1" "$root/infra/tests/engine-stub" >/dev/null
  docker build -q --build-arg STUB_VERSION=v2 -t "$repo:v2" "$root/infra/tests/engine-stub" >/dev/null
  docker tag "$repo:v1" redis:7.4-bookworm
  printf 'FROM %s\nCMD ["celery", "flower"]\n' "$repo:v1" | docker build -q -t mher/flower:2.0 - >/dev/null
  docker images --format '{{.Repository}}:{{.Tag}}' | sort

  echo "--- deploy v1"
  playbook deploy -e app_image_tag=v1
  api | grep -q '"version": "v1"' || fail "api is not v1 after deploying v1"
  echo "ok: v1 healthy, $(tags)"

  echo "--- deploy v2"
  playbook deploy -e app_image_tag=v2
  api | grep -q '"version": "v2"' || fail "api is not v2 after deploying v2"
  [[ "$(tags)" == "deployed=v2 previous=v1" ]] || fail "tags after v2: $(tags)"
  echo "ok: v2 healthy, $(tags)"

  echo "--- deploy v2 again (idempotent)"
  playbook deploy -e app_image_tag=v2
  [[ "$(recap_changed)" == 0 ]] || fail "re-deploying v2 changed $(recap_changed) things"
  echo "ok: changed=0"

  echo "--- rollback"
  playbook rollback
  api | grep -q '"version": "v1"' || fail "api is not v1 after the rollback"
  [[ "$(tags)" == "deployed=v1 previous=v2" ]] || fail "tags after rollback: $(tags)"
  echo "ok: back on v1, $(tags)"

  echo "--- push a rotated secret"
  playbook secrets -e vault_openrouter_api_key=sk-or-v1-rotated
  api | grep -q '"openrouter_key": "sk-or-v1-rotated"' || fail "the api did not get the rotated key"
  api | grep -q '"version": "v1"' || fail "secrets.yml changed the image tag"
  echo "ok: rotated key live, still v1"

  echo "--- the running containers"
  docker ps --format '{{.Names}} {{.Image}} {{.Status}} {{.Ports}}' | sort
  local mem
  mem="$(docker inspect -f '{{.HostConfig.Memory}}' xenios-extraction-worker-1)"
  [[ "$mem" == $((8 * 1024 * 1024 * 1024)) ]] || fail "extraction worker memory limit is $mem"
  if docker ps --format '{{.Ports}}' | grep -E '0\.0\.0\.0|:::' ; then fail "a port is published beyond 127.0.0.1"; fi
  echo "ok: extraction-worker limited to 8G, ports on 127.0.0.1 only"
  touch "$work/passed"
}

if [[ "${1:-}" == --inside ]]; then
  work="$2"
  export PATH="$base/root/usr/bin:$base/root/usr/sbin:$bin:$PATH"
  export LD_LIBRARY_PATH="$base/root/usr/lib/x86_64-linux-gnu" XTABLES_LIBDIR="$base/root/usr/lib/x86_64-linux-gnu/xtables"
  export ANSIBLE_HOME="$work/ansible-home" ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" \
    ANSIBLE_REMOTE_TEMP="$work/ansible-remote-tmp" ANSIBLE_NOCOLOR=1
  inside
  exit 0
fi

# --- outside ---------------------------------------------------------------------------
[[ $EUID -eq 0 ]] || { echo "engine-deploy: run as root" >&2; exit 1; }
[[ -x "$rootfs/usr/bin/curl" ]] || { echo "engine-deploy: run infra/tests/chroot-roles.sh first (base image)" >&2; exit 1; }
"$root/infra/tests/venv.sh"
start=$SECONDS
mkdir -p "$base/debs"
if [[ ! -x "$base/root/usr/sbin/dockerd" ]]; then
  (cd "$base/debs" && apt-get download docker.io containerd runc tini iptables libip4tc2 libip6tc2 \
     libxtables12 libnftnl11 libnetfilter-conntrack3 libnfnetlink0 libmnl0)
  for deb in "$base"/debs/*.deb; do dpkg-deb -x "$deb" "$base/root"; done
fi
ln -sf xtables-nft-multi "$base/root/usr/sbin/iptables"
ln -sf xtables-nft-multi "$base/root/usr/sbin/ip6tables"

work="$(mktemp -d "$base/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A copy of infra/ansible with the example vault (the real one may be rekeyed).
cp -r "$root/infra/ansible" "$work/ansible"
cp "$root/infra/ansible/examples/vault-production.yml" "$work/ansible/inventory/group_vars/production/vault.yml"
unshare --net --mount --pid --fork --mount-proc bash "$0" --inside "$work" || true
if [[ -f "$work/passed" ]]; then
  echo "engine-deploy: 1 passed, 0 failed ($((SECONDS - start))s)"
else
  echo "engine-deploy: 0 passed, 1 failed ($((SECONDS - start))s)"
  exit 1
fi
