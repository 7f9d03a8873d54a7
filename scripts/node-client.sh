#!/usr/bin/env bash
# Installs the TypeScript client's pinned packages (clients/typescript/package-lock.json) with
# `npm ci` under target/ts-client, links them as clients/typescript/node_modules, and prints
# the package's directory. Reinstalls only when the lockfile changed.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=clients/typescript
dir=target/ts-client
if ! command -v npm >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$dir"
stamp="$dir/.lock.sha256"
want=$(cat "$pkg/package.json" "$pkg/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -d "$dir/node_modules" ]; then
  cp "$pkg/package.json" "$pkg/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
  echo "$want" >"$stamp"
fi
ln -sfn "../../$dir/node_modules" "$pkg/node_modules"
echo "$PWD/$pkg"
