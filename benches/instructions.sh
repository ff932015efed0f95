#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: a measure of
# the cost of a request that a busy, shared machine does not blur.
#
#   KEEP_TMP=1 SCENARIOS=hit REPEATS=1 DURATION=1s bash benches/race.sh   # once: writes the configs
#   bash benches/instructions.sh /tmp/sluice-race.XXXX /1k       # a 1 KiB cache hit
#   bash benches/instructions.sh /tmp/sluice-race.XXXX /miss/1k  # a proxied miss
#   TARGET=floor bash benches/instructions.sh /tmp/sluice-race.XXXX /1k  # hyper alone
#   PROTO=h2-tls bash benches/instructions.sh /tmp/sluice-race.XXXX /1k  # over TLS 1.3 + h2
#
# The race's sluice config (one worker) in front of two floor processes
# standing in for the origins; 500 warm-up requests, counters zeroed, then
# N requests (h2load --h1 -c4) and a dump. Needs valgrind and h2load.
# PROTO=h2-tls drives the race config's TLS listener instead, as the race's
# tls-h2 scenario does (HTTP/2 over TLS 1.3, AES-128-GCM, h2load -c4 -m10):
# its figure includes the four TLS handshakes, a few hundred instructions
# per request at the default N.
#
# Environment: SLUICE_BIN [target/release/sluice], FLOOR_BIN
# [target/release/examples/floor], N [5000, h2-tls 20000], PORT_BASE [19200]
# (as the race that wrote DIR), TARGET [sluice] or floor, PROTO [h1] or
# h2-tls (sluice only), CG_OUT [none]: where to keep the callgrind profile
# (for callgrind_annotate --inclusive=yes), BREAKDOWN [0]: 1 also prints
# the instructions per request by crate, and libc's memcpy by the crate
# calling it (benches/callgrind_crates.py). UNIQUE=1 (HTTP/1.1 only): every
# request names a path of its own (PATH?u=N), so that on a caching route
# each is a miss that fills; one connection (h2load gives each connection
# the same list of paths).
set -euo pipefail
dir=${1:?usage: instructions.sh RACE_TMP_DIR [PATH]}
path=${2:-/1k}
cd "$(dirname "$0")/.."
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
FLOOR_BIN=${FLOOR_BIN:-target/release/examples/floor}
PORT_BASE=${PORT_BASE:-19200}
TARGET=${TARGET:-sluice}
PROTO=${PROTO:-h1}
case "$PROTO" in
    h1)
        N=${N:-5000}
        load=(--h1 -c 4)
        ;;
    h2-tls)
        [ "$TARGET" = sluice ] || { echo "PROTO=h2-tls measures sluice only" >&2; exit 2; }
        N=${N:-20000}
        load=(-c 4 -m 10 --tls13-ciphers=TLS_AES_128_GCM_SHA256)
        ;;
    *) echo "unknown PROTO $PROTO (h1 | h2-tls)" >&2; exit 2 ;;
esac
out=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT

for port in $((PORT_BASE + 1)) $((PORT_BASE + 2)); do
    "$FLOOR_BIN" "127.0.0.1:$port" >/dev/null 2>&1 &
    pids+=($!)
done
if [ "$TARGET" = floor ]; then
    port=$((PORT_BASE + 80))
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$FLOOR_BIN" "127.0.0.1:$port" \
        >/dev/null 2>&1 &
else
    port=$((PORT_BASE + 81))
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$SLUICE_BIN" -c "$dir/sluice.toml" \
        >/dev/null 2>&1 &
fi
vg=$!
pids+=("$vg")
url="http://127.0.0.1:$port$path"
for _ in $(seq 150); do
    curl -s -o /dev/null "$url" && break
    sleep 0.2
done
[ "$PROTO" = h1 ] || url="https://127.0.0.1:$((PORT_BASE + 91))$path"
if [ "${UNIQUE:-0}" = 1 ]; then
    [ "$PROTO" = h1 ] || { echo "UNIQUE=1 is for PROTO=h1" >&2; exit 2; }
    load=(--h1 -c 1)
    seq 500 | sed "s|^|$url?w=|" > "$out/warm"
    seq "$N" | sed "s|^|$url?u=|" > "$out/urls"
    h2load "${load[@]}" -n 500 -i "$out/warm" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    h2load "${load[@]}" -n "$N" -i "$out/urls" | grep -E '^requests'
else
    h2load "${load[@]}" -n 500 "$url" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    h2load "${load[@]}" -n "$N" "$url" | grep -E '^requests'
fi
callgrind_control -d "$vg" >/dev/null 2>&1
profile=$(ls "$out"/cg.*.1 | head -1)
[ -z "${CG_OUT:-}" ] || cp "$profile" "$CG_OUT"
total=$(callgrind_annotate "$profile" 2>/dev/null |
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
label=""
[ "${UNIQUE:-0}" != 1 ] || label=" (unique paths)"
echo "$TARGET $PROTO $path$label: $((total / N)) instructions per request"
[ "${BREAKDOWN:-0}" = 0 ] || python3 benches/callgrind_crates.py "$profile" "$N"
