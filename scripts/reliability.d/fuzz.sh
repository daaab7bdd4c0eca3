#!/usr/bin/env bash
# reliability.d plug-in: runs every cargo-fuzz target (fuzz/run-all.sh) for a set time and passes on its
# `RELIABILITY fuzz.<target>.{seconds,execs,crashes}` lines. Seconds per target: HWLEDGER_FUZZ_SECONDS, else
# 10 in short mode and 120 in long mode (RELIABILITY_MODE, set by scripts/reliability.sh). Installs cargo-fuzz
# from crates.io when it is missing. Exits non-zero when a target crashed or could not be built.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${RELIABILITY_MODE:-short}" in
  long) default=120 ;;
  *) default=10 ;;
esac
seconds="${HWLEDGER_FUZZ_SECONDS:-$default}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked >&2
fi
fuzz/run-all.sh "$seconds"
