#!/usr/bin/env bash
# Build every fuzz target and run each for a set time, then print its figures as RELIABILITY lines:
#
#   RELIABILITY fuzz.<target>.seconds <n>     wall-clock seconds the target was fuzzed
#   RELIABILITY fuzz.<target>.execs <n>       inputs executed (libFuzzer's stat::number_of_executed_units, summed)
#   RELIABILITY fuzz.<target>.crashes <n>     new crash/oom/timeout/leak artifacts in fuzz/artifacts/<target>/
#
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]   (default 60 s each, every target of `cargo fuzz list`)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly compiler or, as here, a stable one told to accept
# nightly flags (RUSTC_BOOTSTRAP=1, set below). Builds into $HWLEDGER_FUZZ_TARGET_DIR (default fuzz/target, kept
# apart from the workspace's target dir because sanitizer flags would invalidate it). Seeds the corpora first
# (fuzz/seed.sh). After a crash the target is restarted for the rest of its time (at most 5 restarts), so the
# figures cover the whole period; the crashing inputs stay in fuzz/artifacts/<target>/ (see README.md).
# Exits 1 if any target crashed, 2 if building or running failed.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-60}"
shift || true
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

export RUSTC_BOOTSTRAP=1
target_dir="${HWLEDGER_FUZZ_TARGET_DIR:-$fuzz_dir/target}"
command -v cargo-fuzz >/dev/null 2>&1 || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2; exit 2; }

cd "$fuzz_dir"
"$fuzz_dir/seed.sh" >&2
# -O: optimised; -a: debug assertions and overflow checks stay on, so an arithmetic overflow is a crash.
cargo fuzz build -O -a --target-dir "$target_dir" >&2
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$triple/release"

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

count_artifacts() {
    find "$fuzz_dir/artifacts/$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) 2>/dev/null | wc -l
}

status=0
for t in "${targets[@]}"; do
    bin="$bin_dir/$t"
    [ -x "$bin" ] || { echo "no fuzz binary $bin" >&2; exit 2; }
    mkdir -p "$fuzz_dir/corpus/$t" "$fuzz_dir/artifacts/$t"
    before="$(count_artifacts "$t")"
    execs=0
    start="$(date +%s)"
    restarts=0
    while :; do
        elapsed=$(( $(date +%s) - start ))
        left=$(( seconds - elapsed ))
        [ "$left" -gt 0 ] || break
        log="$(mktemp)"
        set +e
        "$bin" "$fuzz_dir/corpus/$t" -artifact_prefix="$fuzz_dir/artifacts/$t/" -max_total_time="$left" \
            -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1
        rc=$?
        set -e
        n="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
        if [ -z "$n" ]; then
            # No final stats (killed hard): the last progress line "#N ..." is the count reached.
            n="$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')"
        fi
        execs=$(( execs + ${n:-0} ))
        if [ "$rc" -ne 0 ]; then
            if [ "$(count_artifacts "$t")" -eq "$before" ]; then
                echo "fuzz target $t failed (exit $rc) without leaving an artifact; log:" >&2
                tail -n 40 "$log" >&2
                rm -f "$log"
                exit 2
            fi
            grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" >&2 || true
            restarts=$(( restarts + 1 ))
            if [ "$restarts" -gt 5 ]; then
                rm -f "$log"
                break
            fi
        fi
        rm -f "$log"
    done
    crashes=$(( $(count_artifacts "$t") - before ))
    [ "$crashes" -eq 0 ] || status=1
    echo "RELIABILITY fuzz.$t.seconds $(( $(date +%s) - start ))"
    echo "RELIABILITY fuzz.$t.execs $execs"
    echo "RELIABILITY fuzz.$t.crashes $crashes"
done
exit "$status"
