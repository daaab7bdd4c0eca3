#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the system packages the tests use (real sshd, openssl,
# curl, promtool, python3, headless chromium for the dashboard test), then runs fmt, clippy and every
# test of the workspace.
# Usage: scripts/test.sh            (set HWLEDGER_SLOW_TESTS=1 for the long crash/fuzz-style runs)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v tar >/dev/null 2>&1 || need+=(tar)
# The dashboard test renders the page in Debian's chromium (large: only if absent); DejaVu so text renders.
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Tests run with optimised dependencies (see [profile.dev.package."*"]) so the storage tests are quick.
cargo test --workspace --all-targets
cargo test --workspace --doc
