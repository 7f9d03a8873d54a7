#!/usr/bin/env bash
# Makes sure a Rust toolchain is available (rustup's stable), plus a C compiler and pkg-config
# for crates that build C. Sourced by run.sh and test.sh.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cc >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  printf '[toolchain] installing build-essential, pkg-config, curl\n' >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config curl ca-certificates >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  printf '[toolchain] installing Rust (rustup, stable)\n' >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi
