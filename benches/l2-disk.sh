#!/usr/bin/env bash
# The disk tier (`[cache.l2] kind = "disk"`): start-up with ENTRIES records,
# hit latency and throughput from disk, and a BIG MiB object through it.
#
#   bash benches/l2-disk.sh
#   ENTRIES=20000 BIG=50 SKIP_BUILD=1 bash benches/l2-disk.sh
#
# 1. fill: ENTRIES small pages (/e/N, 1 KiB) fetched once each through
#    sluice, so that each is stored in memory and on disk;
# 2. start-up: sluice killed with SIGKILL and started again; the time the
#    background index takes ("disk cache indexed ... ms=") and the time to
#    answer the first request;
# 3. hits: wrk over random /e/N with a memory tier of MEM_SIZE (far smaller
#    than the set, so nearly every lookup misses memory and hits disk),
#    against wrk on one page that memory holds;
# 4. a BIG MiB object (larger than memory's max_object_size, so it goes to
#    disk only): fetched twice (miss, then disk hit), with the time, the
#    rate and sluice's peak RSS (VmHWM) after each.
#
# Environment (defaults in brackets):
#   ENTRIES [100000]  BIG [200] (MiB)  MEM_SIZE [4MiB]  DURATION [10s]
#   WRK_THREADS [2]  WRK_CONNS [32]  WORKERS [2]  PORT_BASE [19400]
#   SKIP_BUILD [0]  KEEP_TMP [0]
set -euo pipefail

ENTRIES=${ENTRIES:-100000}
BIG=${BIG:-200}
MEM_SIZE=${MEM_SIZE:-4MiB}
DURATION=${DURATION:-10s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
WORKERS=${WORKERS:-2}
PORT_BASE=${PORT_BASE:-19400}
SKIP_BUILD=${SKIP_BUILD:-0}

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v wrk >/dev/null || die "wrk is needed"
build_bins
make_tmp l2-disk
ORIGIN_PORT=$((PORT_BASE + 1))
PROXY_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
ports_free "$ORIGIN_PORT" "$PROXY_PORT" "$ADMIN_PORT"

# An origin of fixed pages (/e/N: 1 KiB) and large bodies (/big/BYTES),
# fresh for a day.
cat >"$TMP/origin.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"x" * (1 << 20)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/big/"):
            size = int(self.path[5:])
            self.head(size)
            left = size
            while left:
                n = min(left, len(CHUNK))
                self.wfile.write(CHUNK[:n])
                left -= n
            return
        body = (self.path.encode() + b" ") * 1024
        body = body[:1024]
        self.head(len(body))
        self.wfile.write(body)

    def head(self, length):
        self.send_response(200)
        self.send_header("cache-control", "public, max-age=86400")
        self.send_header("content-length", str(length))
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY
start_bg origin "$TMP/origin.log" python3 "$TMP/origin.py" "$ORIGIN_PORT"
wait_ready origin "$ORIGIN_PORT" "${PID_OF[origin]}" "$TMP/origin.log"

cat >"$TMP/sluice.toml" <<EOF
[server]
workers = $WORKERS

[[listener]]
name = "http"
listen = "127.0.0.1:$PROXY_PORT"

[[route]]
pool = "origin"
cache = true

[pool.origin]
servers = [ { addr = "127.0.0.1:$ORIGIN_PORT" } ]

[cache]
max_size = "$MEM_SIZE"
max_object_size = "1MiB"

[cache.l2]
kind = "disk"
path = "$TMP/disk"
max_size = "20GiB"
max_object_size = "512MiB"
store_queue = $((ENTRIES + 1000))

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
EOF

start_sluice() {
    start_bg sluice "$TMP/sluice.log" "$SLUICE_BIN" --config "$TMP/sluice.toml"
    wait_ready sluice "$PROXY_PORT" "${PID_OF[sluice]}" "$TMP/sluice.log"
}

# metric NAME{LABELS}: its value in a scrape.
metric() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'
}

# wait_disk_objects N: until the disk tier holds N objects (up to 10 min).
wait_disk_objects() {
    for _ in $(seq 6000); do
        local n
        n=$(metric 'sluice_cache_tier_objects{tier="disk"}')
        [ "${n:-0}" -ge "$1" ] && return 0
        sleep 0.1
    done
    die "the disk tier holds ${n:-0} objects, not $1"
}

vmhwm_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${PID_OF[sluice]}/status"; }

start_sluice
log "fill: $ENTRIES pages"
fill_started=$(date +%s.%N)
python3 - "$PROXY_PORT" "$ENTRIES" <<'PY'
import http.client, sys, threading
port, total = int(sys.argv[1]), int(sys.argv[2])
def work(first, step):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(first, total + 1, step):
        c.request("GET", f"/e/{i}")
        c.getresponse().read()
threads = [threading.Thread(target=work, args=(k + 1, 16)) for k in range(16)]
for t in threads: t.start()
for t in threads: t.join()
PY
wait_disk_objects "$ENTRIES"
fill_s=$(awk -v a="$fill_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
disk_bytes=$(metric 'sluice_cache_tier_bytes{tier="disk"}')
dropped=$(metric 'sluice_cache_tier_store_dropped_total{tier="disk"}')

log "restart after SIGKILL"
kill -KILL "${PID_OF[sluice]}"
wait "${PID_OF[sluice]}" 2>/dev/null || true
forget_pid "${PID_OF[sluice]}"
restart_started=$(date +%s.%N)
start_sluice
first_answer_ms=$(awk -v a="$restart_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
for _ in $(seq 1200); do grep -q "disk cache indexed" "$TMP/sluice.log" && break; sleep 0.1; done
indexed=$(grep "disk cache indexed" "$TMP/sluice.log" | tail -1)
index_ms=$(sed -n 's/.*ms=\([0-9]*\).*/\1/p' <<<"$indexed")
index_records=$(sed -n 's/.*records=\([0-9]*\).*/\1/p' <<<"$indexed")

cat >"$TMP/random.lua" <<EOF
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/e/" .. math.random(1, $ENTRIES))
end
EOF
log "hits from disk: random pages over $ENTRIES, memory $MEM_SIZE"
hits_before=$(metric 'sluice_cache_tier_lookups_total{result="hit",tier="disk"}')
wrk_run "$TMP/wrk-disk.txt" sluice "$DURATION" "http://127.0.0.1:$PROXY_PORT/" -s "$TMP/random.lua"
hits_after=$(metric 'sluice_cache_tier_lookups_total{result="hit",tier="disk"}')
tier_sum=$(metric 'sluice_cache_tier_duration_seconds_sum{tier="disk"}')
tier_count=$(metric 'sluice_cache_tier_duration_seconds_count{tier="disk"}')
log "hits from memory: one page"
wrk_run "$TMP/wrk-mem.txt" sluice "$DURATION" "http://127.0.0.1:$PROXY_PORT/e/1"

read -r disk_rps disk_p99 disk_err disk_non2xx disk_reqs < <(parse_wrk "$TMP/wrk-disk.txt")
read -r mem_rps mem_p99 _ _ _ < <(parse_wrk "$TMP/wrk-mem.txt")
p50() { awk '/^ +50%/ { print $2 }' "$1"; }

log "a $BIG MiB object"
objects=$(metric 'sluice_cache_tier_objects{tier="disk"}')
big=$((BIG << 20))
rss_start=$(vmhwm_mib)
miss=$(curl -s -o /dev/null -w '%{time_total} %{speed_download}' "http://127.0.0.1:$PROXY_PORT/big/$big")
wait_disk_objects $((objects + 1))
rss_miss=$(vmhwm_mib)
hit=$(curl -s -o /dev/null -D "$TMP/big-hit.head" -w '%{time_total} %{speed_download}' "http://127.0.0.1:$PROXY_PORT/big/$big")
rss_hit=$(vmhwm_mib)
grep -qi 'detail=l2' "$TMP/big-hit.head" || die "the second fetch of the large object was not a disk hit"
mibs() { awk -v b="$2" -v t="$1" 'BEGIN { printf "%.2f s, %.0f MiB/s", t, b / 1048576 }'; }

cat <<EOF

| measure | value |
|---|---|
| fill: $ENTRIES pages of 1 KiB through sluice | ${fill_s} s; ${disk_bytes} bytes on disk; ${dropped:-0} stores dropped |
| start-up after SIGKILL: first answer | ${first_answer_ms} ms |
| start-up: index of ${index_records} records rebuilt in the background | ${index_ms} ms |
| disk hits (random pages, memory $MEM_SIZE): req/s, p50, p99 | ${disk_rps}, $(p50 "$TMP/wrk-disk.txt"), ${disk_p99} ms ($((${hits_after%.*} - ${hits_before%.*})) disk hits of ${disk_reqs} requests; errors ${disk_err}, non-2xx ${disk_non2xx}) |
| disk lookup (sluice_cache_tier_duration_seconds mean) | $(awk -v s="$tier_sum" -v c="$tier_count" 'BEGIN { if (c > 0) printf "%.0f µs", s / c * 1e6; else print "n/a" }') |
| memory hits (one page): req/s, p50, p99 | ${mem_rps}, $(p50 "$TMP/wrk-mem.txt"), ${mem_p99} ms |
| $BIG MiB object, miss (origin -> client, written to disk) | $(mibs ${miss}); peak RSS ${rss_miss} MiB (${rss_start} MiB before) |
| $BIG MiB object, disk hit | $(mibs ${hit}); peak RSS ${rss_hit} MiB |

workers=$WORKERS, wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)
EOF
