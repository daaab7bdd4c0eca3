#!/usr/bin/env bash
# Runs every reliability test of hwledger, collects the `RELIABILITY <key> <value>` lines they print, and
# rewrites the figures section of docs/RELIABILITY.md (between its `figures:begin` / `figures:end` markers)
# with the machine and, per test, whether it passed, how long it took, when, on which commit and in which mode
# it ran, its command and its figures. Tests not run this time keep their rows and figures, so
# `scripts/reliability.sh fuzz` refreshes the fuzzing figures without discarding a long crash run's.
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
import datetime, pathlib, re, sys
work, results, mode, machine, commit, rustc, env_line = sys.argv[1:8]
doc = pathlib.Path("docs/RELIABILITY.md")
text = doc.read_text()
begin, end = "<!-- figures:begin -->", "<!-- figures:end -->"
if begin not in text or end not in text:
    sys.exit("docs/RELIABILITY.md lacks the figures markers")
head, rest = text.split(begin, 1)
old, tail = rest.split(end, 1)

# What the document already holds: one row and one figures section per test. A test not rerun now keeps
# its row (with the date, commit and mode of its own run) and its figures. Rows of the older one-header
# layout (4 cells) take the date, commit and mode of that header.
def header(key):
    m = re.search(r"^- " + key + r": (.*)$", old, re.M)
    return m.group(1).strip() if m else "?"
old_date, old_commit, old_mode = header("date"), header("commit"), header("mode").split(" ")[0]
kept_rows, kept_figs, order = {}, {}, []
for line in old.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
    if len(cells) == 4 and cells[0] not in ("test", "---"):
        name, status, secs, cmd = cells
        kept_rows[name] = (status, secs, old_mode, old_date, old_commit, cmd.strip("`"))
    elif len(cells) == 7 and cells[0] not in ("test", "---"):
        kept_rows[cells[0]] = (cells[1], cells[2], cells[3], cells[4], cells[5], cells[6].strip("`"))
    else:
        continue
    order.append(cells[0])
for section in re.split(r"^### ", old, flags=re.M)[1:]:
    name, _, body = section.partition("\n")
    kept_figs[name.strip()] = body.strip()

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
rows, ran = {}, []
for l in pathlib.Path(results).read_text().splitlines():
    if not l.strip():
        continue
    name, status, secs, cmd = l.split("\t")
    rows[name] = (status, secs, mode, now, commit, cmd)
    ran.append(name)
    figs = pathlib.Path(work, name + ".figures")
    lines = [f.split(" ", 1) for f in figs.read_text().splitlines() if " " in f] if figs.exists() else []
    if lines:
        kept_figs[name] = "\n".join(["| key | value |", "| --- | --- |"] + [f"| `{k}` | {v} |" for k, v in lines])
    else:
        kept_figs[name] = "(no figures printed)"
    if name not in order:
        order.append(name)
rows = {**kept_rows, **rows}

out = [begin, "", "_Written by `scripts/reliability.sh`; do not edit by hand. Each row says when, on which commit and in "
       "which mode that test last ran: `scripts/reliability.sh NAME` reruns one test and keeps the others' figures._", "",
       f"- last run: {now}, {mode} mode ({env_line}): {', '.join(ran) or 'no test'}", f"- machine: {machine}", f"- toolchain: {rustc}", ""]
out += ["| test | result | seconds | mode | run | commit | command |", "| --- | --- | --- | --- | --- | --- | --- |"]
for name in order:
    status, secs, m, date, c, cmd = rows[name]
    out.append(f"| {name} | {status} | {secs} | {m} | {date} | {c} | `{cmd}` |")
for name in order:
    out += ["", f"### {name}", "", kept_figs.get(name, "(no figures printed)")]
out += ["", end]
doc.write_text(head + "\n".join(out) + tail)
PY
echo "docs/RELIABILITY.md figures rewritten ($mode mode)" >&2
exit $failed
