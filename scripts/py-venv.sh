#!/usr/bin/env bash
# Creates (or refreshes) the Python venv with the pinned real peers of the interop tests
# (Celery, Flower, the OpenAI SDK) and schemathesis (the contract test) under
# target/py-venv, and prints its python's path.
# Reinstalls only when tests/python/requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
req=tests/python/requirements.txt
if ! command -v python3 >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2 || {
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv" >&2
  }
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$stamp"
fi
echo "$PWD/$venv/bin/python"
