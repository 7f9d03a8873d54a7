#!/usr/bin/env bash
# `make infra-e2e`: the whole deployment proven for real on this machine, one step after the
# other, each timed. Root only, slow (see infra/README.md, "Checks", for the times here).
#
#   1. check.sh          the offline checks (as CI runs them)
#   2. chroot-roles.sh   provision.yml (every role) twice on a fresh Debian chroot: changed=0
#   3. image-build.sh    the real image from infra/docker/Dockerfile, checked
#   4. engine-deploy.sh  deploy/rollback/secrets of that image, Caddy HTTPS from pebble
#   5. dev-stack.sh      `docker compose up` of the development stack, reload on edit
#
# E2E_STEPS="3 4" runs only those steps. Every step cleans up after itself (engines,
# namespaces, mounts); what stays is cached under target/ (chroot, base trees, image layers).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ $EUID -eq 0 ]] || { echo "infra-e2e: run as root" >&2; exit 1; }
# The host tools the steps need, from Debian's packages (a fresh machine lacks them).
host_debs=(debootstrap pebble iproute2 openssl curl)
missing=()
for deb in "${host_debs[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
if ((${#missing[@]})); then
  echo "infra-e2e: apt-get install ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >/dev/null || { echo "infra-e2e: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
steps=(
  "offline checks (check.sh)|infra/tests/check.sh"
  "provision.yml twice on a Debian chroot (chroot-roles.sh)|infra/tests/chroot-roles.sh"
  "the real image (image-build.sh)|infra/tests/image-build.sh"
  "deploy, rollback, Caddy HTTPS (engine-deploy.sh)|infra/tests/engine-deploy.sh"
  "docker compose up, dev stack (dev-stack.sh)|infra/tests/dev-stack.sh"
)
passed=0
failed=0
summary=()
total=$SECONDS
for i in "${!steps[@]}"; do
  n=$((i + 1))
  if [[ -n "${E2E_STEPS:-}" && " $E2E_STEPS " != *" $n "* ]]; then continue; fi
  name="${steps[$i]%%|*}" script="${steps[$i]#*|}"
  echo "=== $n. $name"
  start=$SECONDS
  if bash "$root/$script"; then
    result=PASS; passed=$((passed + 1))
  else
    result=FAIL; failed=$((failed + 1))
  fi
  summary+=("$(printf '%s  %d. %-58s %5ss' "$result" "$n" "$name" $((SECONDS - start)))")
  echo "=== $n. $result in $((SECONDS - start))s"
done
echo
printf '%s\n' "${summary[@]}"
echo "infra-e2e: $passed passed, $failed failed ($((SECONDS - total))s)"
((failed == 0))
