#!/usr/bin/env bash
# Offline checks of everything under infra/ (run by CI; `make infra-check`). A few minutes.
#
#   hadolint on the Dockerfile; the dev compose file (and the root compose.yaml that includes
#   it) through `docker-compose config` and the compose-spec schema; actionlint on
#   .github/workflows; the make targets of infra.mk run for real where they need no engine or
#   host (ansible-lint, vault edit/encrypt, the playbooks' syntax check, every refusal); the
#   vault round trip with the example password; the app and caddy templates rendered for
#   staging, production and a worker-only production host by a local-connection playbook
#   (twice: the second run must change nothing), then validated as Compose and as a Caddyfile
#   and checked for every production property (check_prod_compose.py).
#
# Tools come from the pinned venv target/infra-venv (infra/tests/venv.sh). Scratch files live
# in a target/infra-check.* directory that is removed on exit. Ends with
# "infra: N passed, M failed" and exits non-zero if anything failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
infra/tests/venv.sh || { echo "infra: 0 passed, 1 failed"; exit 1; }
bin="${INFRA_VENV:-$root/target/infra-venv}/bin"
ansible_dir="$root/infra/ansible"
example_password="$ansible_dir/vault-password.example"

mkdir -p "$root/target"
work="$(mktemp -d "$root/target/infra-check.XXXXXX")"
# INFRA_CHECK_KEEP=1 keeps the rendered files for a look.
if [[ "${INFRA_CHECK_KEEP:-0}" == 1 ]]; then
  trap 'echo "infra: scratch files kept in $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi
# Keep ansible's and ansible-lint's state out of $HOME.
export ANSIBLE_HOME="$work/ansible-home" ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" ANSIBLE_REMOTE_TEMP="$work/ansible-remote-tmp"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1
export PATH="$bin:$PATH"

# Rendering uses a scratch copy of infra/ansible whose vaults are the example ones
# (infra/ansible/examples), so the real vaults can be rekeyed without breaking this check.
scratch_ansible="$work/ansible"
cp -r "$ansible_dir" "$scratch_ansible"
for env in staging production; do
  cp "$ansible_dir/examples/vault-$env.yml" "$scratch_ansible/inventory/group_vars/$env/vault.yml"
done

passed=0
failed=0
failed_names=()

# step NAME COMMAND...: run, time and count one check; show its output when it fails.
step() {
  local name="$1" start=$SECONDS log="$work/step.log"
  shift
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf 'PASS  %-58s %3ss\n' "$name" $((SECONDS - start))
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    printf 'FAIL  %-58s %3ss\n' "$name" $((SECONDS - start))
    sed 's/^/      | /' "$log" | tail -n 60
  fi
}

# --- Docker --------------------------------------------------------------------------
check_dev_compose() {
  local file="$root/infra/docker/docker-compose.yml" worker
  docker-compose -f "$file" config -q \
    && [[ "$(docker-compose -f "$file" config --services | sort | tr '\n' ' ')" \
          == "api flower postgres redis worker " ]] \
    && check-jsonschema --builtin-schema vendor.compose-spec "$file" || return 1
  # `docker compose up` from the repository root is the same stack.
  (cd "$root" && [[ "$(docker-compose config --services | sort | tr '\n' ' ')" == "api flower postgres redis worker " ]]) \
    || { echo "the root compose.yaml does not give the dev stack"; return 1; }
  worker="$(docker-compose -f "$file" config --format json | python3 -c '
import json, sys
w = json.load(sys.stdin)["services"]["worker"]
print(w["healthcheck"]["test"], w["stop_grace_period"], w["environment"]["WORKER_SHUTDOWN_TIMEOUT_SECS"], w["environment"]["ENVIRONMENT"])')"
  [[ "$worker" == "['CMD', '/app/target/debug/xenios-worker', '--check'] 2m0s 100 development" ]] \
    || { echo "dev worker: healthcheck/grace/shutdown/environment are: $worker"; return 1; }
  ! grep -Eq 'xenios-worker[^"]* -Q [^ ]*(extraction|transcription)' "$file" \
    || { echo "a Rust worker consumes extraction or transcription"; return 1; }
}

# The image sets ENVIRONMENT=production (the dev compose file sets development itself).
check_dockerfile() {
  hadolint --config infra/docker/.hadolint.yaml infra/docker/Dockerfile || return 1
  awk '/^FROM .* AS runtime/ {r=1} r && /ENVIRONMENT=production/ {found=1} END {exit !found}' infra/docker/Dockerfile \
    || { echo "the runtime stage does not set ENVIRONMENT=production"; return 1; }
  grep -q '^ARG GIT_COMMIT' infra/docker/Dockerfile || { echo "no GIT_COMMIT build arg"; return 1; }
  grep -q '^USER 10001' infra/docker/Dockerfile || { echo "the runtime does not run as non-root"; return 1; }
}

workflows() {
  actionlint -color=false .github/workflows/*.yml
}

# --- Ansible -------------------------------------------------------------------------
syntax_check() {
  local inventory playbook
  cd "$ansible_dir" || return 1
  for inventory in staging production; do
    for playbook in playbooks/*.yml; do
      ansible-playbook -i "inventory/$inventory.yml" --syntax-check "$playbook" || return 1
    done
  done
}

# Vaults: the example ones open with the example password and not with a wrong one; the
# vaults deploys use are encrypted (with whatever password).
vault_committed() {
  local env file
  echo wrong-password > "$work/wrong-password"
  for env in staging production; do
    for file in "$ansible_dir/examples/vault-$env.yml" "$ansible_dir/inventory/group_vars/$env/vault.yml"; do
      [[ "$(head -n 1 "$file")" == '$ANSIBLE_VAULT;1.1;AES256' ]] || { echo "$file is not vault-encrypted"; return 1; }
    done
    file="$ansible_dir/examples/vault-$env.yml"
    ansible-vault view --vault-password-file "$example_password" "$file" | grep -q "^vault_backend_api_key: \"example-backend-api-key-$env\"$" \
      || { echo "$file does not decrypt to the example secrets"; return 1; }
    if ansible-vault view --vault-password-file "$work/wrong-password" "$file" >/dev/null 2>&1; then
      echo "$file decrypts with a wrong password"; return 1
    fi
  done
}

# A fresh secret is encrypted with the example password; the render step below decrypts it
# as deploy does (-e @file) and the check step finds it in the production .env.
probe="probe-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
vault_encrypt() {
  printf -- '---\nvault_backend_api_key: "%s"\n' "$probe" > "$work/probe-vault.yml"
  ansible-vault encrypt --vault-password-file "$example_password" "$work/probe-vault.yml" \
    && ! grep -q "$probe" "$work/probe-vault.yml" \
    && ansible-vault view --vault-password-file "$example_password" "$work/probe-vault.yml" | grep -q "$probe"
}

# render ENV [KIND]: the local-connection playbook over the real inventory and vault. KIND
# `workers` renders a worker-only production host (inventory group `workers` only) against a
# shared rediss:// Redis.
shared_redis="rediss://:shared-redis-password-0123@redis.internal.example:6380/0"
render() {
  local env="$1" kind="${2:-all}" out="$work/render/$1-${2:-all}" inventory="inventory/$1.yml"
  mkdir -p "$out/log"
  local extra=(
    -e "ansible_connection=local"
    -e "ansible_python_interpreter=$bin/python"
    -e "app_root=$out/app"
    -e "app_owner=$(id -un)" -e "app_group=$(id -gn)"
    -e "caddy_owner=$(id -un)" -e "caddy_group=$(id -gn)"
    -e "caddy_config_path=$out/Caddyfile"
    -e "caddy_access_log=$out/log/access.log"
    -e "caddy_binary=$bin/caddy"
    -e '{"caddy_manage_service": false}'
    -e "app_image_tag=0123456789ab"
    -e '{"app_allow_example_secrets": true}'
  )
  [[ "$env" == production ]] && extra+=(-e "@$work/probe-vault.yml")
  if [[ "$kind" == workers ]]; then
    inventory="inventory/$env-workers.yml"
    printf -- '---\n%s:\n  children:\n    workers:\n      hosts:\n        xenios-worker-1:\n' "$env" \
      > "$scratch_ansible/$inventory"
    extra+=(-e "vault_shared_redis_url=$shared_redis")
  fi
  cd "$scratch_ansible" && HOME="$work" XDG_DATA_HOME="$work/caddy-data" XDG_CONFIG_HOME="$work/caddy-config" \
    ansible-playbook -i "$inventory" --vault-password-file "$example_password" \
      --diff -v "${extra[@]}" "$root/infra/tests/render.yml"
}

render_first() {
  local log="$work/render-$1-${2:-all}.log"
  render "$@" | tee "$log"
  local rc=${PIPESTATUS[0]}
  # no_log: neither the vaulted key nor the fresh probe may show up, even with --diff -v.
  if grep -q -e "example-backend-api-key-$1" -e "$probe" -e "shared-redis-password" "$log"; then
    echo "a secret leaked into the ansible output"; return 1
  fi
  return "$rc"
}

render_again() {
  local log="$work/render-$1-${2:-all}-again.log"
  render "$@" | tee "$log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] && grep -Eq 'changed=0 .*failed=0' "$log"
}

check_rendered() {
  local env="$1" kind="${2:-all}" out="$work/render/$1-${2:-all}" key
  local compose="$out/app/docker-compose.yml"
  docker-compose --project-directory "$out/app" -f "$compose" config -q || return 1
  docker-compose --project-directory "$out/app" -f "$compose" config --format json > "$out/resolved.json" || return 1
  check-jsonschema --builtin-schema vendor.compose-spec "$compose" || return 1
  python3 "$root/infra/tests/check_prod_compose.py" "$compose" "$out/resolved.json" "$out/app/.env" \
    "ghcr.io/xenios/ai-backend:0123456789ab" "$kind" || return 1
  key="example-backend-api-key-$env"
  [[ "$env" == production ]] && key="$probe"
  grep -qx "XENIOS_BACKEND_API_KEY='$key'" "$out/app/.env" || { echo ".env lacks the vaulted XENIOS_BACKEND_API_KEY"; return 1; }
  grep -qx "ENVIRONMENT='$env'" "$out/app/.env" || { echo ".env: ENVIRONMENT is not $env"; return 1; }
  ! grep -q '^XENIOS_BACKEND_API_KEY_PREVIOUS=' "$out/app/.env" || { echo ".env sets an empty previous API key"; return 1; }
  if [[ "$kind" == workers ]]; then
    grep -qx "REDIS_URL='$shared_redis'" "$out/app/.env" || { echo ".env: REDIS_URL is not the shared Redis"; return 1; }
  fi
}

check_caddyfile() {
  local out="$work/render/$1-all"
  HOME="$work" XDG_DATA_HOME="$work/caddy-data" XDG_CONFIG_HOME="$work/caddy-config" \
    caddy validate --adapter caddyfile --config "$out/Caddyfile" || return 1
  # The adapted JSON is what Caddy runs: check it, not the text.
  HOME="$work" caddy adapt --adapter caddyfile --config "$out/Caddyfile" > "$out/caddy.json" 2>/dev/null || return 1
  python3 - "$out/caddy.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
text = json.dumps(config)
problems = []
encoders = [log.get("encoder", {}) for log in config.get("logging", {}).get("logs", {}).values()]
filters = [e for e in encoders if e.get("format") == "filter"]
if not filters:
    problems.append("no filtered access log")
for encoder in filters:
    fields = encoder.get("fields", {})
    for header in ("X-Api-Key", "Authorization", "Cookie"):
        if fields.get(f"request>headers>{header}", {}).get("filter") != "delete":
            problems.append(f"access log keeps {header}")
    if encoder.get("wrap", {}).get("format") != "json":
        problems.append("access log is not JSON")
metrics_404 = any(
    route.get("match") and any("/metrics" in m.get("path", []) for m in route["match"])
    and any(h.get("handler") == "static_response" and h.get("status_code") == 404 for h in route.get("handle", []))
    for server in config["apps"]["http"]["servers"].values() for site in server["routes"]
    for sub in site.get("handle", []) for route in sub.get("routes", []))
if not metrics_404:
    problems.append("/metrics is not answered 404")
for needle in ("authentication", "Strict-Transport-Security", '"flush_interval": -1', "127.0.0.1:8000"):
    if needle not in text:
        problems.append(f"{needle} missing")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

# render_refused TASK EXTRA-VARS...: rendering must fail in the app role's task TASK (an
# assertion), and write no .env.
render_refused() {
  local task="$1" out="$work/render/refused" last
  shift
  rm -rf "$out" && mkdir -p "$out"
  cd "$scratch_ansible" || return 1
  if ansible-playbook -i "${REFUSED_INVENTORY:-inventory/production.yml}" --vault-password-file "$example_password" \
      -e ansible_connection=local -e "ansible_python_interpreter=$bin/python" \
      -e "app_root=$out/app" -e "app_owner=$(id -un)" -e "app_group=$(id -gn)" \
      -e app_image_tag=0123456789ab "$@" "$root/infra/tests/render.yml" > "$out/log" 2>&1; then
    echo "rendering succeeded with $*"; return 1
  fi
  last="$(grep -o 'TASK \[app : [^]]*\]' "$out/log" | tail -n 1)"
  [[ "$last" == "TASK [app : $task]" ]] || { echo "with $*: failed in '$last', want '$task'"; cat "$out/log"; return 1; }
  [[ ! -e "$out/app/.env" ]] || { echo ".env written with $*"; return 1; }
}

# Deploys refuse what would break or weaken the stack.
refusals() {
  local test='{"app_allow_example_secrets": true}' real='{"vault_is_example": false}'
  render_refused "Refuse the example secrets" \
    && render_refused "Refuse the example SSH key" -e "$real" \
    && render_refused "Check the secret values" -e "$test" -e '{"vault_openrouter_api_key": "sk-or-it\u0027s"}' \
    && render_refused "Check the secret values" -e "$test" -e vault_redis_password=short \
    && render_refused "Check the secret values" -e "$test" -e vault_backend_api_key=short \
    && render_refused "Check the secret values" -e "$test" -e vault_backend_api_key_previous=short \
    && render_refused "Check the secret values" -e "$test" -e vault_backend_api_key=same-key-0123456789 \
         -e vault_backend_api_key_previous=same-key-0123456789 \
    && render_refused "Check the image tag" -e "$test" -e app_image_tag=latest \
    && REFUSED_INVENTORY=inventory/production-workers.yml \
         render_refused "Check the host kind and its Redis" -e "$test"
}

# The make targets of infra.mk, run for real where no engine or remote host is needed: the
# playbook targets with ANSIBLE_ARGS=--syntax-check (the venv, ENV and vault checks and the
# ansible-playbook command line all run), edit-secrets and encrypt on scratch files, the
# refusals. The engine targets (docker-*) and the slow root-only tests run in make infra-e2e;
# here they must at least expand.
infra_make() {
  make -s --no-print-directory -f infra/infra.mk VAULT_PASSWORD_FILE="$example_password" \
    ANSIBLE_DIR="$scratch_ansible" "$@"
}
make_targets() {
  local t out
  cd "$root" || return 1
  for t in provision deploy deploy-staging deploy-prod rollback push-secrets; do
    out="$(infra_make "$t" ENV=production TAG=0123abc ANSIBLE_ARGS=--syntax-check 2>&1)" \
      || { echo "make $t failed:"; echo "$out"; return 1; }
    case "$t" in
      provision) grep -q '^playbook: playbooks/provision.yml$' <<<"$out" ;;
      deploy*) grep -q '^playbook: playbooks/deploy.yml$' <<<"$out" ;;
      rollback) grep -q '^playbook: playbooks/rollback.yml$' <<<"$out" ;;
      push-secrets) grep -q '^playbook: playbooks/secrets.yml$' <<<"$out" ;;
    esac || { echo "make $t ran:"; echo "$out"; return 1; }
  done
  # Which inventory each one uses (the syntax check does not say).
  for t in deploy deploy-prod deploy-staging rollback; do
    out="$(make -s -n -f infra/infra.mk "$t" ENV=production TAG=0123abc VAULT_PASSWORD_FILE="$example_password")"
    case "$t" in
      deploy|deploy-prod) grep -q 'inventory/production.yml .*app_image_tag=0123abc playbooks/deploy.yml' <<<"$out" ;;
      deploy-staging) grep -q 'inventory/staging.yml .*app_image_tag=0123abc playbooks/deploy.yml' <<<"$out" ;;
      rollback) grep -q 'inventory/production.yml .*playbooks/rollback.yml' <<<"$out" ;;
    esac || { echo "make $t expands to:"; echo "$out"; return 1; }
  done
  # Refusals: no TAG, a bad ENV, no vault password file.
  if out="$(infra_make deploy ENV=production 2>&1)" || ! grep -q 'TAG is required' <<<"$out"; then
    echo "make deploy without TAG: $out"; return 1; fi
  if out="$(infra_make deploy ENV=prod TAG=x 2>&1)" || ! grep -q 'ENV must be staging or production' <<<"$out"; then
    echo "make deploy ENV=prod: $out"; return 1; fi
  if out="$(make -s -f infra/infra.mk deploy ENV=production TAG=x VAULT_PASSWORD_FILE="$work/none" 2>&1)" \
      || ! grep -q 'No vault password file' <<<"$out"; then
    echo "make deploy without a vault password file: $out"; return 1; fi
  # edit-secrets: an "editor" adds a line; the vault must re-encrypt with it.
  printf '#!/bin/sh\necho "vault_probe_edit: edited-%s" >> "$1"\n' "$probe" > "$work/editor" && chmod +x "$work/editor"
  EDITOR="$work/editor" infra_make edit-secrets ENV=staging || { echo "make edit-secrets failed"; return 1; }
  [[ "$(head -n 1 "$scratch_ansible/inventory/group_vars/staging/vault.yml")" == '$ANSIBLE_VAULT;1.1;AES256' ]] \
    && ansible-vault view --vault-password-file "$example_password" "$scratch_ansible/inventory/group_vars/staging/vault.yml" \
      | grep -qx "vault_probe_edit: edited-$probe" || { echo "make edit-secrets did not keep the edit encrypted"; return 1; }
  cp "$ansible_dir/examples/vault-staging.yml" "$scratch_ansible/inventory/group_vars/staging/vault.yml"
  # encrypt FILE=...
  printf -- '---\nvault_probe: "%s"\n' "$probe" > "$work/plain.yml"
  infra_make encrypt FILE="$work/plain.yml" || { echo "make encrypt failed"; return 1; }
  ! grep -q "$probe" "$work/plain.yml" \
    && ansible-vault view --vault-password-file "$example_password" "$work/plain.yml" | grep -q "$probe" \
    || { echo "make encrypt did not encrypt"; return 1; }
  # Engine and slow targets: expansion only here.
  for t in docker-build docker-up docker-down infra-chroot-test infra-image-test infra-engine-test infra-dev-test infra-e2e; do
    make -s -n -f infra/infra.mk "$t" >/dev/null || { echo "make -n $t failed"; return 1; }
  done
}

make_lint() {
  XDG_CACHE_HOME="$work/cache" make -s --no-print-directory -f infra/infra.mk lint-ansible
}

echo "infra checks (tools: $bin)"
step "Dockerfile: hadolint, ENVIRONMENT=production, GIT_COMMIT, non-root" check_dockerfile
step "dev compose + root compose.yaml: config, schema, workers" check_dev_compose
step "actionlint .github/workflows" workflows
step "make lint-ansible (production profile, offline)" make_lint
step "ansible-playbook --syntax-check (4 playbooks x 2 inventories)" syntax_check
step "vault: example vaults open with the example password only" vault_committed
step "vault: encrypt a fresh secret with the example password" vault_encrypt
step "infra.mk targets run (syntax check, edit, encrypt, refusals)" make_targets
for target in staging:all production:all production:workers; do
  env="${target%%:*}" kind="${target#*:}"
  step "render $env ($kind) templates (vault decrypted, no secret leaks)" render_first "$env" "$kind"
  step "render $env ($kind) templates again: changed=0" render_again "$env" "$kind"
  step "$env ($kind) compose: config, schema, properties, .env" check_rendered "$env" "$kind"
  if [[ "$kind" == all ]]; then
    step "$env Caddyfile: validate; log filter, /metrics 404, headers" check_caddyfile "$env"
  fi
done
step "deploy refuses: example vault/SSH key, bad secrets, latest, no Redis" refusals

if ((failed > 0)); then
  printf 'failed: %s\n' "${failed_names[@]}"
fi
echo "infra: $passed passed, $failed failed"
((failed == 0))
