#!/usr/bin/env bash
# Apply the `common` and `firewall` roles for real to a Debian 12 chroot, inside private
# network, mount and PID namespaces, twice; fail unless the second run reports changed=0.
# Slow (about 5 minutes the first time: debootstrap), needs root, debootstrap and unshare;
# not part of CI. See infra/README.md, "Checks".
#
#   sudo infra/tests/chroot-roles.sh          # reuses target/infra-chroot/rootfs if present
#   FRESH=1 sudo infra/tests/chroot-roles.sh  # rebuild the chroot from scratch
#
# Safety: the playbook runs inside `unshare --net --mount --pid`, so UFW's nf_tables rules
# live in a throwaway network namespace and all mounts vanish with it. /proc/sys/{kernel,vm,
# fs,dev} are read-only inside, so no host-wide sysctl can be written (net.* is per
# namespace), and the common role only writes /etc/sysctl.d there (common_sysctl_apply=false).
# Users, sudoers and the SSH config are written inside the chroot only. The script checks
# that the host's own ruleset and sysctls are unchanged at the end.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
base="$root/target/infra-chroot"
rootfs="$base/rootfs"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
bin="${INFRA_VENV:-$root/target/infra-venv}/bin"
# What the roles install; downloaded beforehand, installed for real offline inside.
packages=(acl ca-certificates curl gnupg locales openssh-server python3-debian sudo tzdata
  unattended-upgrades ufw)

inside() {
  # Runs in the new namespaces (see the end of the script).
  mount -t proc proc "$rootfs/proc"
  local d
  for d in kernel vm fs dev; do
    mount --bind "$rootfs/proc/sys/$d" "$rootfs/proc/sys/$d"
    mount -o remount,bind,ro "$rootfs/proc/sys/$d"
  done
  mount -t tmpfs -o mode=0755 tmpfs "$rootfs/run"
  ip link set lo up 2>/dev/null || true

  local run
  for run in 1 2; do
    echo "--- run $run"
    (cd "$root/infra/ansible" && ansible-playbook -i "$work/inventory.ini" "$root/infra/tests/chroot-site.yml") \
      | tee "$work/run-$run.log" || true
  done
  # The state the gates below judge, each with its exit status (nothing is ignored).
  echo "--- state inside the chroot"
  mkdir -p "$rootfs/run/sshd"
  probe ufw-status chroot "$rootfs" ufw status verbose
  probe id-deploy chroot "$rootfs" id deploy
  probe authorized-keys chroot "$rootfs" cat /home/deploy/.ssh/authorized_keys
  probe sshd-t chroot "$rootfs" /usr/sbin/sshd -t
}

# probe NAME COMMAND...: run COMMAND, keep its output in $work/NAME.txt and its status in
# $work/NAME.rc (read by the gates outside the namespaces).
probe() {
  local name="$1"
  shift
  "$@" > "$work/$name.txt" 2>&1
  echo "$?" > "$work/$name.rc"
  sed "s/^/$name: /" "$work/$name.txt"
}

if [[ "${1:-}" == --inside ]]; then
  work="$2"
  export PATH="$bin:$PATH"
  inside
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "chroot-roles: run as root (debootstrap, chroot, unshare)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "chroot-roles: apt-get install debootstrap" >&2; exit 1; }
"$root/infra/tests/venv.sh"
start=$SECONDS

if [[ "${FRESH:-0}" == 1 ]]; then
  rm -rf "$base"
fi
mkdir -p "$base"
if [[ ! -f "$base/.bootstrapped" ]]; then
  rm -rf "$rootfs"
  echo "chroot-roles: debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase --include=python3,systemd,iptables,procps,iproute2 \
    bookworm "$rootfs" "$mirror"
  touch "$base/.bootstrapped"
fi
# Fresh package lists (the roles' cache_valid_time then skips apt update offline) and the
# packages the roles install, into the chroot's apt cache.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -qq
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --download-only "${packages[@]}"

work="$(mktemp -d "$base/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat > "$work/inventory.ini" <<INV
[chroot]
xenios-chroot ansible_connection=community.general.chroot ansible_host=$rootfs ansible_python_interpreter=/usr/bin/python3 ansible_user=root
INV
export ANSIBLE_HOME="$work/ansible-home" ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" ANSIBLE_NOCOLOR=1

host_state() {
  { cat /proc/sys/vm/overcommit_memory /proc/sys/net/ipv4/tcp_syncookies
    if command -v nft >/dev/null; then nft list ruleset 2>/dev/null; fi
    if command -v iptables-save >/dev/null; then iptables-save 2>/dev/null | grep -v '^#'; fi
  } | sha256sum
}
before="$(host_state)"

unshare --net --mount --pid --fork bash "$0" --inside "$work" || echo "chroot-roles: the namespaced run exited with $?"
touch "$work/run-1.log" "$work/run-2.log"

after="$(host_state)"
passed=0
failed=0
# gate NAME CONDITION...: count a check, print it, keep going.
gate() {
  local name="$1"
  shift
  if "$@"; then
    passed=$((passed + 1)); echo "PASS  $name"
  else
    failed=$((failed + 1)); echo "FAIL  $name"
  fi
}
probe_ok() { [[ "$(cat "$work/$1.rc" 2>/dev/null)" == 0 ]]; }
recap() { grep -E '^xenios-chroot +:' "$work/run-$1.log" || true; }
echo "first run : $(recap 1)"
echo "second run: $(recap 2)"
gate "first run succeeds" \
  grep -Eq 'xenios-chroot +: ok=[0-9]+ +changed=[1-9][0-9]* +unreachable=0 +failed=0' "$work/run-1.log"
gate "second run reports changed=0" \
  grep -Eq 'xenios-chroot +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$work/run-2.log"
gate "ufw active, deny incoming, SSH allowed" eval 'probe_ok ufw-status \
  && grep -q "^Status: active" "$work/ufw-status.txt" \
  && grep -q "Default: deny (incoming)" "$work/ufw-status.txt" \
  && grep -Eq "^22/tcp +(ALLOW|LIMIT) IN" "$work/ufw-status.txt"'
gate "id deploy: the user exists, in sudo" eval 'probe_ok id-deploy && grep -Eq "^uid=[0-9]+\(deploy\).*\(sudo\)" "$work/id-deploy.txt"'
gate "authorized_keys is exactly the configured key" eval 'probe_ok authorized-keys \
  && [[ "$(grep -v "^#" "$work/authorized-keys.txt" | grep -c .)" == 1 ]] \
  && grep -q "^ssh-ed25519 .* ops@xenios.example$" "$work/authorized-keys.txt"'
gate "sshd -t accepts the hardened config" probe_ok sshd-t
gate "SSH hardening: no root login, no passwords" eval \
  'grep -qx "PermitRootLogin no" "$rootfs/etc/ssh/sshd_config.d/10-xenios-hardening.conf" \
  && grep -qx "PasswordAuthentication no" "$rootfs/etc/ssh/sshd_config.d/10-xenios-hardening.conf"'
sysctl_file_ok() {
  local kv
  for kv in "vm.overcommit_memory ?= ?1" "net.ipv4.tcp_syncookies ?= ?1" \
      "net.ipv4.conf.all.accept_redirects ?= ?0" "net.ipv4.conf.all.send_redirects ?= ?0"; do
    grep -Eqx "$kv" "$rootfs/etc/sysctl.d/60-xenios.conf" || { echo "60-xenios.conf lacks $kv"; return 1; }
  done
}
gate "sysctl file holds every setting" sysctl_file_ok
gate "the host firewall and sysctls are unchanged" [ "$before" == "$after" ]
echo "chroot-roles: $passed passed, $failed failed ($((SECONDS - start))s)"
exit $((failed > 0))
