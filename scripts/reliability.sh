#!/usr/bin/env bash
# Runs every reliability test of hwledger, collects the `RELIABILITY <key> <value>` lines they print, and
# rewrites the figures section of docs/RELIABILITY.md (between its `figures:begin` / `figures:end` markers)
# with the date, the machine, the mode, each command, whether it passed, how long it took, and its figures.
#
# Usage: scripts/reliability.sh [--long] [NAME...]
#   --long   the long mode: 50 SIGKILLs of the server (HWLEDGER_CRASH_KILLS=50), 50 of the engine child,
#            and whatever else the long mode of a test means (see docs/RELIABILITY.md)
#   NAME     run only these tests (names as in the table of docs/RELIABILITY.md, e.g. crash_matrix hostile)
#
# Plug-ins: every executable `scripts/reliability.d/*.sh` is run too (after the built-in tests, in name
# order, with RELIABILITY_MODE=short|long in its environment); its stdout lines `RELIABILITY <key> <value>`
# are collected like the tests' (keys such as `fuzz.<target>.execs` or `secrets.<check>.*`), and a non-zero
# exit marks it failed. The mounts of the disk-full tests need root.
#
# Exit status: 0 when every test passed, 1 otherwise (the document is rewritten either way, saying which failed).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=short
only=()
for arg in "$@"; do
  case "$arg" in
    --long) mode=long ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) only+=("$arg") ;;
  esac
done

if [ "$mode" = long ]; then
  export HWLEDGER_CRASH_KILLS="${HWLEDGER_CRASH_KILLS:-50}"
fi
export RELIABILITY_MODE="$mode"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results="$work/results.tsv"   # name \t status \t seconds \t command
: >"$results"
failed=0

# name | command (run by bash -c from the repository root)
tests=(
  "crash_engine|cargo test -p hwledger-engine --test crash -- --nocapture"
  "crash_matrix|cargo test --test crash_matrix -- --nocapture"
  "disk_full_engine|cargo test -p hwledger-engine --test disk_full -- --nocapture"
  "disk_full_server|cargo test --test disk_full -- --nocapture"
  "hostile|cargo test --test hostile -- --nocapture"
  "concurrency_engine|cargo test -p hwledger-engine --test concurrency -- --nocapture"
  "concurrency_server|cargo test --test concurrency -- --nocapture"
)
for plugin in scripts/reliability.d/*.sh; do
  [ -x "$plugin" ] && tests+=("$(basename "$plugin" .sh)|$plugin")
done

wanted() {
  [ ${#only[@]} -eq 0 ] && return 0
  local n
  for n in "${only[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

for entry in "${tests[@]}"; do
  name="${entry%%|*}"
  cmd="${entry#*|}"
  wanted "$name" || continue
  echo "== $name: $cmd" >&2
  start=$(date +%s)
  bash -c "$cmd" >"$work/$name.out" 2>"$work/$name.err"
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then status=passed; else status="FAILED (exit $rc)"; failed=1; fi
  echo "   $status in ${secs}s" >&2
  if [ $rc -ne 0 ]; then tail -n 30 "$work/$name.out" "$work/$name.err" >&2; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$cmd" >>"$results"
  grep -E '^RELIABILITY [^ ]+ .+' "$work/$name.out" | sed 's/^RELIABILITY //' >"$work/$name.figures" || true
done

machine="$(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //'); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
rustc_v="$(rustc --version 2>/dev/null || echo unknown)"
env_line="HWLEDGER_CRASH_KILLS=${HWLEDGER_CRASH_KILLS:-5 (default)}"

python3 - "$work" "$results" "$mode" "$machine" "$commit" "$rustc_v" "$env_line" <<'PY'
import datetime, pathlib, sys
work, results, mode, machine, commit, rustc, env_line = sys.argv[1:8]
doc = pathlib.Path("docs/RELIABILITY.md")
text = doc.read_text()
begin, end = "<!-- figures:begin -->", "<!-- figures:end -->"
if begin not in text or end not in text:
    sys.exit("docs/RELIABILITY.md lacks the figures markers")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = [begin, "", "_Written by `scripts/reliability.sh" + (" --long" if mode == "long" else "") + "`; do not edit by hand._", "",
       f"- date: {now}", f"- machine: {machine}", f"- commit: {commit}", f"- toolchain: {rustc}",
       f"- mode: {mode} ({env_line})", ""]
out += ["| test | result | seconds | command |", "| --- | --- | --- | --- |"]
rows = [l.split("\t") for l in pathlib.Path(results).read_text().splitlines() if l.strip()]
for name, status, secs, cmd in rows:
    out.append(f"| {name} | {status} | {secs} | `{cmd}` |")
for name, status, secs, cmd in rows:
    figs = pathlib.Path(work, name + ".figures")
    lines = [l.split(" ", 1) for l in figs.read_text().splitlines()] if figs.exists() else []
    out += ["", f"### {name}", ""]
    if not lines:
        out.append("(no figures printed)")
        continue
    out += ["| key | value |", "| --- | --- |"]
    out += [f"| `{k}` | {v} |" for k, v in lines]
out += ["", end]
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
doc.write_text(head + "\n".join(out) + tail)
PY
echo "docs/RELIABILITY.md figures rewritten ($mode mode)" >&2
exit $failed
