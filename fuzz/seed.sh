#!/usr/bin/env bash
# Seed each fuzz target's corpus (fuzz/corpus/<target>/) with the captured fixtures it parses.
# Usage: fuzz/seed.sh   (from anywhere; idempotent; corpus/ is git-ignored)
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fixtures="$fuzz_dir/../fixtures/gpu-and-cloud"

seed() {
    local target="$1"
    shift
    mkdir -p "$fuzz_dir/corpus/$target"
    local dir
    for dir in "$@"; do
        find "$fixtures/$dir" -maxdepth 1 -type f ! -name README.md -exec cp {} "$fuzz_dir/corpus/$target/" \;
    done
    echo "$target: $(find "$fuzz_dir/corpus/$target" -type f | wc -l) inputs"
}

seed gpu_nvidia_csv nvidia-smi-csv
seed gpu_nvidia_xml nvidia-smi-xml
seed gpu_rocm_smi rocm-smi
seed gpu_amd_smi amd-smi
seed gpu_system_profiler system-profiler
seed tailscale_status tailscale
