#!/usr/bin/env bash
# Create or reuse the Python venv with the pinned infra tools (infra/requirements.txt).
# Prints nothing on reuse; the venv path is target/infra-venv unless INFRA_VENV is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${INFRA_VENV:-$root/target/infra-venv}"
req="$root/infra/requirements.txt"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/ansible-playbook" && -f "$venv/.requirements.sha256" \
      && "$(cat "$venv/.requirements.sha256")" == "$want" ]]; then
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "infra: $python is older than Python 3.11, which ansible-core 2.19 needs (set PYTHON=...)" >&2
  exit 1
fi
echo "infra: installing the pinned tools into $venv (about a minute)" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$venv/.requirements.sha256"
