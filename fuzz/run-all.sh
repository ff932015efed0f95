#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60), one after another,
# growing fuzz/corpus/<target>/. A target that finds a crash stops there
# (its input is saved under fuzz/artifacts/<target>/) and the others still
# run; the script exits non-zero if any failed.
#
#   fuzz/run-all.sh            # 60 s per target
#   fuzz/run-all.sh 300        # 5 min per target
#   fuzz/run-all.sh 30 framing units   # only these targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

mkdir -p target
failed=()
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    log="target/run-all-$target.log"
    extra=()
    if [ -f "dict/$target.dict" ]; then
        extra+=("-dict=dict/$target.dict")
    fi
    if cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    else
        tail -n 40 "$log"
        echo "!! $target failed; the input is under fuzz/artifacts/$target/, log in fuzz/$log" >&2
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "== failed: ${failed[*]}" >&2
    exit 1
fi
echo "== all targets ran ${seconds}s each without a failure"
