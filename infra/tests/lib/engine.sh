# A throwaway Docker engine in private namespaces, and the base images no registry serves here.
# Sourced by the infra/tests/*.sh scripts that need an engine (image-build.sh, dev-stack.sh,
# engine-deploy.sh). Root only. Nothing here touches the host's own network: dockerd, its
# bridges and iptables rules live in the network namespace of `unshare --net`; the only way
# out of it is infra/tests/registry-proxy.py, which reaches the package registries only.
#
# Outside the namespaces:  engine_prepare; base_rootfs_all; engine_enter SCRIPT ARGS...
# Inside (SCRIPT --inside): engine_start; import_base_images; ...; (engine_stop on EXIT)

# shellcheck shell=bash
root="${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}"
engine_base="$root/target/infra-engine"
images_base="$root/target/infra-images"
bin="${INFRA_VENV:-$root/target/infra-venv}/bin"
debian_mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Inside the engine's namespace: the registry proxy for `docker build --network host`.
proxy_addr=0.0.0.0:3128
proxy_url="http://127.0.0.1:3128"

# Debian 12's engine, unpacked (not installed) under target/infra-engine/root. Pinned.
engine_debs=(
  docker.io=20.10.24+dfsg1-1+deb12u1+b6 containerd=1.6.20~ds1-1+deb12u3 runc=1.1.5+ds1-1+deb12u1
  tini=0.19.0-1+b3 iptables=1.8.9-2 libip4tc2=1.8.9-2 libip6tc2=1.8.9-2 libxtables12=1.8.9-2
  libnftnl11=1.2.4-2 libnetfilter-conntrack3=1.0.9-3 libnfnetlink0=1.0.2-2 libmnl0=1.0.4-3
)
# The Python packages of the Flower image (mher/flower:2.0 is Flower 2.0 on Celery 5).
flower_pip=(flower==2.0.1 celery==5.5.3 redis==5.2.1)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

engine_prepare() {
  [[ $EUID -eq 0 ]] || { echo "run as root (unshare, chroot, dockerd)" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "apt-get install debootstrap" >&2; exit 1; }
  "$root/infra/tests/venv.sh"
  mkdir -p "$engine_base/debs" "$images_base"
  if [[ ! -x "$engine_base/root/usr/sbin/dockerd" ]]; then
    log "engine: apt-get download ${engine_debs[*]}"
    (cd "$engine_base/debs" && apt-get download -q "${engine_debs[@]}")
    local deb
    for deb in "$engine_base"/debs/*.deb; do dpkg-deb -x "$deb" "$engine_base/root"; done
  fi
  ln -sf xtables-nft-multi "$engine_base/root/usr/sbin/iptables"
  ln -sf xtables-nft-multi "$engine_base/root/usr/sbin/ip6tables"
}

# --- base root file systems (on the host, where the registries are reachable) ------------
# base_rootfs: debootstrap bookworm (minbase), the tree imported as debian:bookworm-slim.
base_rootfs() {
  local dir="$images_base/rootfs"
  if [[ ! -f "$images_base/.bootstrapped" ]]; then
    rm -rf "$dir"
    log "images: debootstrap bookworm into $dir (a few minutes)"
    debootstrap --variant=minbase bookworm "$dir" "$debian_mirror" > "$images_base/debootstrap.log" 2>&1 \
      || { tail -20 "$images_base/debootstrap.log"; return 1; }
    touch "$images_base/.bootstrapped" "$images_base/rootfs.done"
  fi
  [[ -f "$images_base/rootfs.done" ]] || touch "$images_base/rootfs.done"
}

# derived_rootfs NAME SETUP-FUNCTION: a copy of the base tree, changed by SETUP (run on the
# host with the tree as $1, e.g. apt-get in a chroot), kept until the base changes.
derived_rootfs() {
  local name="$1" setup="$2" dir="$images_base/$1" recipe
  # Kept while the base tree and the setup function (its text) are unchanged.
  recipe="$(declare -f "$setup" | sha256sum | cut -d' ' -f1)"
  if [[ -f "$dir.done" && "$dir.done" -nt "$images_base/.bootstrapped" \
        && "$(cat "$dir.done")" == "$recipe" ]]; then
    return 0
  fi
  log "images: preparing the $name tree"
  rm -rf "$dir" && cp -a "$images_base/rootfs" "$dir"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  "$setup" "$dir" > "$images_base/$name.log" 2>&1 || { tail -30 "$images_base/$name.log"; return 1; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
  : > "$dir/etc/resolv.conf"
  echo "$recipe" > "$dir.done"
}

chroot_apt() {  # chroot_apt DIR PACKAGES...
  local dir="$1"
  shift
  chroot "$dir" apt-get update -qq
  chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# host_cas DIR: trust the CAs this machine adds to Debian's (/usr/local/share/ca-certificates:
# a TLS-inspecting egress proxy's, say), so cargo and pip in the tree reach the registries
# as the host does. Only the build-side trees get them, never debian:bookworm-slim.
host_cas() {
  local dir="$1"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
}

# The official rust:<v>-slim-bookworm has gcc, libc6-dev and ca-certificates, rustup's
# toolchain in /usr/local/rustup and cargo in /usr/local/cargo. The toolchain is this
# machine's own (the one whose rustc reports RUST_VERSION), copied without its docs.
setup_rust() {
  local dir="$1" toolchain name tool
  chroot_apt "$dir" ca-certificates gcc libc6-dev
  host_cas "$dir"
  toolchain="$(rust_toolchain_dir)" || return 1
  name="$("$toolchain/bin/rustc" --version | awk '{print $2}')-x86_64-unknown-linux-gnu"
  mkdir -p "$dir/usr/local/rustup/toolchains/$name" "$dir/usr/local/cargo/bin"
  tar -C "$toolchain" -c --exclude=./share/doc . | tar -C "$dir/usr/local/rustup/toolchains/$name" -x
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" \
    > "$dir/usr/local/rustup/settings.toml"
  install -m 0755 "$(command -v rustup || echo "$HOME/.cargo/bin/rustup")" "$dir/usr/local/cargo/bin/rustup"
  for tool in cargo rustc rustdoc cargo-fmt rustfmt cargo-clippy clippy-driver; do
    ln -sf rustup "$dir/usr/local/cargo/bin/$tool"
  done
  chmod -R a+w "$dir/usr/local/rustup" "$dir/usr/local/cargo"
}

rust_version() { sed -n 's/^ARG RUST_VERSION=//p' "$root/infra/docker/Dockerfile"; }

# The real directory of this machine's rustup toolchain whose rustc is RUST_VERSION.
rust_toolchain_dir() {
  local want dir
  want="$(rust_version)"
  for dir in "$HOME"/.rustup/toolchains/*/; do
    dir="$(readlink -f "$dir")"
    if "$dir/bin/rustc" --version 2>/dev/null | grep -q "^rustc $want[. ]"; then
      echo "$dir"; return 0
    fi
  done
  echo "no rustup toolchain with rustc $want on this machine (rustup toolchain install $want)" >&2
  return 1
}

setup_redis() { chroot_apt "$1" redis-tools redis-server; }

setup_flower() {
  local dir="$1"
  chroot_apt "$dir" ca-certificates python3 python3-venv
  host_cas "$dir"
  chroot "$dir" python3 -m venv /opt/flower
  chroot "$dir" env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/flower/bin/pip install -q --disable-pip-version-check "${flower_pip[@]}"
}

# Debian's PostgreSQL 15 with a small entrypoint that honours POSTGRES_USER, _PASSWORD and
# _DB as the official image does (the app's migrations need nothing newer).
setup_postgres() {
  local dir="$1"
  chroot_apt "$dir" postgresql-15
  mkdir -p "$dir/var/lib/postgresql/data"
  chroot "$dir" chown postgres:postgres /var/lib/postgresql/data
  cat > "$dir/usr/local/bin/docker-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
export PGDATA=/var/lib/postgresql/data
user="${POSTGRES_USER:-postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # As the official image: POSTGRES_DB defaults to the user's name, and any database but
  # `postgres` (the one initdb makes) is created.
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    postgres --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres <<SQL >/dev/null
CREATE DATABASE "$db" OWNER "$user";
SQL
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
SH
  chmod 0755 "$dir/usr/local/bin/docker-entrypoint.sh"
}

base_rootfs_all() {
  base_rootfs
  derived_rootfs rust setup_rust
  derived_rootfs redis setup_redis
  derived_rootfs flower setup_flower
  derived_rootfs postgres setup_postgres
}

# --- entering the namespaces -------------------------------------------------------------
# engine_enter SCRIPT ARGS...: run `SCRIPT --inside ARGS...` in new network, mount and PID
# namespaces, with the registry proxy serving it for as long as it runs.
engine_enter() {
  local script="$1" rc=0
  shift
  python3 "$root/infra/tests/registry-proxy.py" serve "$engine_base/proxy.sock" 2>>"$engine_base/proxy.log" &
  local proxy_pid=$!
  unshare --net --mount --pid --fork --mount-proc bash "$script" --inside "$@" || rc=$?
  kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null
  return "$rc"
}

# --- inside the namespaces ---------------------------------------------------------------
engine_env() {
  export PATH="$engine_base/root/usr/bin:$engine_base/root/usr/sbin:$bin:$PATH"
  export LD_LIBRARY_PATH="$engine_base/root/usr/lib/x86_64-linux-gnu"
  export XTABLES_LIBDIR="$engine_base/root/usr/lib/x86_64-linux-gnu/xtables"
  export DOCKER_HOST="unix://$engine_base/docker.sock" DOCKER_CONFIG="$engine_base/docker-config"
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
}

engine_start() {
  engine_env
  ip link set lo up
  python3 "$root/infra/tests/registry-proxy.py" relay "$proxy_addr" "$engine_base/proxy.sock" \
    2>>"$engine_base/proxy.log" &
  engine_relay_pid=$!
  # Whatever a killed run left (a fresh namespace has no engine running), then the engine.
  rm -rf "$engine_base/dockerd.pid" "$engine_base/docker.sock" "$engine_base/exec"
  # The image layers stay in target/infra-engine/data between runs (a rebuild is cached).
  dockerd --data-root "$engine_base/data" --exec-root "$engine_base/exec" \
    --pidfile "$engine_base/dockerd.pid" -H "$DOCKER_HOST" > "$engine_base/dockerd.log" 2>&1 &
  engine_dockerd_pid=$!
  local i
  for i in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version --format 'engine {{.Server.Version}}' >&2 \
    || { tail -30 "$engine_base/dockerd.log"; return 1; }
}

engine_stop() {
  docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
  [[ -n "${engine_dockerd_pid:-}" ]] && kill "$engine_dockerd_pid" 2>/dev/null && wait "$engine_dockerd_pid" 2>/dev/null
  [[ -n "${engine_relay_pid:-}" ]] && kill "$engine_relay_pid" 2>/dev/null
  true
}

# import_tree TAG DIR [CHANGE...]: `docker import` of a prepared tree, unless already there.
import_tree() {
  local tag="$1" dir="$2"
  shift 2
  if docker image inspect "$tag" >/dev/null 2>&1 && [[ ! "$dir.done" -nt "$engine_base/imported-${tag//[\/:]/_}" ]]; then
    return 0
  fi
  log "images: docker import $tag"
  local changes=() change
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$dir" -c --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
      --exclude=./usr/share/doc/* --exclude=./usr/share/man/* --exclude=./usr/share/locale/* . \
    | docker import "${changes[@]}" - "$tag" >/dev/null
  touch "$engine_base/imported-${tag//[\/:]/_}"
}

# The images the Dockerfile and the compose files name, made from Debian's packages (and
# PyPI's Flower), named as the Dockerfile and compose files name them, so those stay as a
# normal machine uses them. Stand-ins for the versions only: Redis is Debian's 7.0 under the
# redis:7.4 name, PostgreSQL Debian's 15 under postgres:16 (the app needs nothing newer).
import_base_images() {
  local rust_tag
  rust_tag="rust:$(rust_version)-slim-bookworm"
  import_tree debian:bookworm-slim "$images_base/rootfs" 'CMD ["bash"]'
  import_tree "$rust_tag" "$images_base/rust" \
    'ENV RUSTUP_HOME=/usr/local/rustup' 'ENV CARGO_HOME=/usr/local/cargo' \
    'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'CMD ["bash"]'
  import_tree redis:7.4-bookworm "$images_base/redis" 'WORKDIR /data' 'CMD ["redis-server"]'
  docker tag redis:7.4-bookworm redis:7-bookworm
  import_tree mher/flower:2.0 "$images_base/flower" \
    'ENV PATH=/opt/flower/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV PYTHONUNBUFFERED=1' 'CMD ["celery", "flower"]'
  import_tree postgres:16-bookworm "$images_base/postgres" 'USER postgres' 'ENV PGHOST=/tmp' \
    'ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
}

# Gates of the engine tests: `check NAME COMMAND...` runs one, counts it in $passed/$failed
# and prints it with its time; a failing gate shows the last lines of its output ($work must
# be set by the caller).
passed=0
failed=0
check() {
  local name="$1" start=$SECONDS
  shift
  if "$@" > "$work/check.log" 2>&1; then
    passed=$((passed + 1)); printf 'PASS  %-64s %3ss\n' "$name" $((SECONDS - start))
  else
    failed=$((failed + 1)); printf 'FAIL  %-64s %3ss\n' "$name" $((SECONDS - start))
    sed 's/^/      | /' "$work/check.log" | tail -n 40
  fi
}
