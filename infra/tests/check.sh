#!/usr/bin/env bash
# Offline checks of everything under infra/ (run by CI; `make infra-check`). A few minutes.
#
#   hadolint on the Dockerfile; the dev compose file through `docker-compose config` and the
#   compose-spec schema; ansible-lint (production profile, offline); --syntax-check of every
#   playbook against both inventories; the vault round trip with the example password; the
#   app and caddy templates rendered for staging and production by a local-connection
#   playbook (twice: the second run must change nothing), then validated as Compose and as a
#   Caddyfile and checked for every production property (check_prod_compose.py).
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
  local file="$root/infra/docker/docker-compose.yml"
  docker-compose -f "$file" config -q \
    && docker-compose -f "$file" --profile local-db config -q \
    && [[ "$(docker-compose -f "$file" --profile local-db config --services | sort | tr '\n' ' ')" \
          == "api extraction-worker flower postgres redis transcription-worker worker " ]] \
    && check-jsonschema --builtin-schema vendor.compose-spec "$file"
}

# --- Ansible -------------------------------------------------------------------------
ansible_lint() {
  cd "$ansible_dir" && XDG_CACHE_HOME="$work/cache" ansible-lint -c .ansible-lint --offline --strict \
    . ../tests/render.yml ../tests/chroot-site.yml
}

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

# render ENV: the local-connection playbook over the real inventory and vault.
render() {
  local env="$1" out="$work/render/$1"
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
  cd "$scratch_ansible" && HOME="$work" XDG_DATA_HOME="$work/caddy-data" XDG_CONFIG_HOME="$work/caddy-config" \
    ansible-playbook -i "inventory/$env.yml" --vault-password-file "$example_password" \
      --diff -v "${extra[@]}" "$root/infra/tests/render.yml"
}

render_first() {
  render "$1" | tee "$work/render-$1.log"
  local rc=${PIPESTATUS[0]}
  # no_log: neither the vaulted key nor the fresh probe may show up, even with --diff -v.
  if grep -q -e "example-backend-api-key-$1" -e "$probe" "$work/render-$1.log"; then
    echo "a secret leaked into the ansible output"; return 1
  fi
  return "$rc"
}

render_again() {
  render "$1" | tee "$work/render-$1-again.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] && grep -Eq 'changed=0 .*failed=0' "$work/render-$1-again.log"
}

check_rendered() {
  local env="$1" out="$work/render/$1" key
  local compose="$out/app/docker-compose.yml"
  docker-compose --project-directory "$out/app" -f "$compose" config -q || return 1
  docker-compose --project-directory "$out/app" -f "$compose" config --format json > "$out/resolved.json" || return 1
  check-jsonschema --builtin-schema vendor.compose-spec "$compose" || return 1
  python3 "$root/infra/tests/check_prod_compose.py" "$compose" "$out/resolved.json" "$out/app/.env" \
    "ghcr.io/xenios/xenios-backend:0123456789ab" || return 1
  key="example-backend-api-key-$env"
  [[ "$env" == production ]] && key="$probe"
  grep -qx "XENIOS_BACKEND_API_KEY='$key'" "$out/app/.env" || { echo ".env lacks the vaulted XENIOS_BACKEND_API_KEY"; return 1; }
  grep -qx "ENVIRONMENT='$env'" "$out/app/.env" || { echo ".env: ENVIRONMENT is not $env"; return 1; }
}

check_caddyfile() {
  local out="$work/render/$1"
  HOME="$work" XDG_DATA_HOME="$work/caddy-data" XDG_CONFIG_HOME="$work/caddy-config" \
    caddy validate --adapter caddyfile --config "$out/Caddyfile" || return 1
  grep -q 'basic_auth' "$out/Caddyfile" && grep -q 'reverse_proxy 127.0.0.1:8000' "$out/Caddyfile" \
    && grep -q 'Strict-Transport-Security' "$out/Caddyfile" && grep -q 'format json' "$out/Caddyfile"
}

# render_refused TASK EXTRA-VARS...: rendering must fail in the app role's task TASK (an
# assertion), and write no .env.
render_refused() {
  local task="$1" out="$work/render/refused" last
  shift
  rm -rf "$out" && mkdir -p "$out"
  cd "$scratch_ansible" || return 1
  if ansible-playbook -i inventory/production.yml --vault-password-file "$example_password" \
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
  local test='{"app_allow_example_secrets": true}'
  render_refused "Refuse the example secrets" \
    && render_refused "Check the secret values" -e "$test" -e '{"vault_openrouter_api_key": "sk-or-it\u0027s"}' \
    && render_refused "Check the secret values" -e "$test" -e vault_redis_password=short \
    && render_refused "Check the secret values" -e "$test" -e vault_backend_api_key=short \
    && render_refused "Check the image tag" -e "$test" -e app_image_tag=latest
}

# The make targets expand to the intended commands (dry run; infra.mk alone).
make_targets() {
  local t out
  for t in provision deploy deploy-staging deploy-prod rollback push-secrets edit-secrets encrypt \
      lint-ansible docker-build docker-up docker-down infra-check; do
    out="$(make -s -n -f infra/infra.mk "$t" ENV=production TAG=0123abc \
      VAULT_PASSWORD_FILE=infra/ansible/vault-password.example)" || { echo "make $t failed"; return 1; }
    case "$t" in
      deploy|deploy-prod) grep -q 'inventory/production.yml .*app_image_tag=0123abc playbooks/deploy.yml' <<<"$out" ;;
      deploy-staging) grep -q 'inventory/staging.yml .*app_image_tag=0123abc playbooks/deploy.yml' <<<"$out" ;;
      rollback) grep -q 'inventory/production.yml .*playbooks/rollback.yml' <<<"$out" ;;
      push-secrets) grep -q 'playbooks/secrets.yml' <<<"$out" ;;
      *) true ;;
    esac || { echo "make $t expands to:"; echo "$out"; return 1; }
  done
}

echo "infra checks (tools: $bin)"
step "hadolint infra/docker/Dockerfile" \
  hadolint --config infra/docker/.hadolint.yaml infra/docker/Dockerfile
step "dev compose: docker-compose config + compose-spec schema" check_dev_compose
step "infra.mk: every target expands (make -n)" make_targets
step "ansible-lint (production profile, offline)" ansible_lint
step "ansible-playbook --syntax-check (4 playbooks x 2 inventories)" syntax_check
step "vault: example vaults open with the example password only" vault_committed
step "vault: encrypt a fresh secret with the example password" vault_encrypt
for env in staging production; do
  step "render $env templates (vault decrypted, no secret in output)" render_first "$env"
  step "render $env templates again: changed=0" render_again "$env"
  step "$env compose: config, schema, production properties, .env" check_rendered "$env"
  step "$env Caddyfile: caddy validate, TLS site, basic_auth, headers" check_caddyfile "$env"
done
step "deploy refuses: example vault, quote in a secret, short keys, latest" refusals

if ((failed > 0)); then
  printf 'failed: %s\n' "${failed_names[@]}"
fi
echo "infra: $passed passed, $failed failed"
((failed == 0))
