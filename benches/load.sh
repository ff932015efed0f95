#!/usr/bin/env bash
# Load benchmark: sluice against nginx and HAProxy on the same machine, in the
# same run, in front of the same origin (the demo origin, `demo --origin-only`).
#
#   bash benches/load.sh                          # defaults below
#   DURATION=5s REPEATS=5 WORKERS=2 bash benches/load.sh
#   SCENARIOS="small big" bash benches/load.sh    # add the ~6 KiB request/response scenario
#
# Each round drives, in this order, the origin directly, sluice, nginx and
# HAProxy with the same wrk command, and the rounds repeat REPEATS times, so
# that noise on a shared machine falls on all targets alike. The report gives
# per target the median over rounds of requests/s and of p99 latency, and the
# ratios of sluice to the others. Paste the markdown table into the README.
#
# All three proxies get the same worker count, keep-alive to the client and to
# the origin (a pool of up to 64 idle upstream connections), no access log,
# and the same header work: X-Forwarded-For/-Proto/-Host and Via added to the
# request, Via to the response (sluice always does that; nginx and HAProxy are
# configured to do it too).
#
# Environment (defaults in brackets):
#   WORKERS [2]          worker processes/threads of every proxy
#   DURATION [10s]       wrk duration per measurement
#   REPEATS [3]          rounds
#   WARMUP [2s]          one unmeasured wrk run per target before the rounds ("0" skips)
#   WRK_THREADS [2]      wrk -t
#   WRK_CONNS [64]       wrk -c
#   SCENARIOS [small]    "small" (GET /, ~150-byte answer), "big" (~6 KiB URI echoed back), or both
#   PORT_BASE [19000]    origin PORT_BASE+1, sluice +81, nginx +82, haproxy +83 (all 127.0.0.1)
#   SKIP_INSTALL [0]     1: never call apt-get
#   SKIP_BUILD [0]       1: use the existing release binaries
#   KEEP_TMP [0]         1: keep the temp dir (configs, server logs, raw wrk output)

set -euo pipefail

WORKERS=${WORKERS:-2}
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
SCENARIOS=${SCENARIOS:-small}
PORT_BASE=${PORT_BASE:-19000}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

ORIGIN_PORT=$((PORT_BASE + 1))
SLUICE_PORT=$((PORT_BASE + 81))
NGINX_PORT=$((PORT_BASE + 82))
HAPROXY_PORT=$((PORT_BASE + 83))
TARGETS=(direct sluice nginx haproxy)

# log, die, install_missing, the cleanup on exit, wait_ready, the nginx and
# HAProxy config pieces, run_haproxy, wrk_run, parse_wrk, median, ...; changes
# to the repo root.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- install ---
install_missing --nginx-light "nginx haproxy" nginx haproxy wrk curl

# ------------------------------------------------------------------ build ---
build_bins

# ---------------------------------------------------------------- cleanup ---
make_tmp sluice-load

# ---------------------------------------------------------------- servers ---
ports_free "$ORIGIN_PORT" "$SLUICE_PORT" "$NGINX_PORT" "$HAPROXY_PORT"
start_origin

cat >"$TMP/sluice.toml" <<EOF
[server]
workers = $WORKERS
drain_timeout = "1s"

[[listener]]
name = "bench"
listen = "127.0.0.1:$SLUICE_PORT"

[[route]]
name = "all"
path_prefix = "/"
pool = "origin"

[pool.origin]
servers = [ { addr = "127.0.0.1:$ORIGIN_PORT" } ]
max_idle_per_server = 64
EOF
RUST_LOG=warn "$SLUICE_BIN" --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
PIDS+=($!)
wait_ready sluice "$SLUICE_PORT" $! "$TMP/sluice.log"

write_nginx_conf "$TMP/nginx" "$WORKERS" 4096 <<EOF
$(nginx_upstream "$ORIGIN_PORT")

    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://origin;
$(nginx_proxy_headers "            ")
            add_header Via "1.1 nginx" always;
        }
    }
EOF
# -e: the start-up error log too goes to the temp dir, not /var/log/nginx.
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -g 'daemon off;' \
    >"$TMP/nginx.log" 2>&1 &
PIDS+=($!)
wait_ready nginx "$NGINX_PORT" $! "$TMP/nginx/error.log"

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

$(haproxy_defaults 30s)

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 haproxy"
    http-response add-header Via "1.1 haproxy"
    default_backend origin

backend origin
    server o1 127.0.0.1:$ORIGIN_PORT
EOF
# shellcheck disable=SC2119 # no prefix: not pinned
run_haproxy
wait_ready haproxy "$HAPROXY_PORT" "${PID_OF[haproxy]}" "$TMP/haproxy.log"

port_of() {
    case $1 in
        direct) echo "$ORIGIN_PORT" ;; sluice) echo "$SLUICE_PORT" ;;
        nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;;
    esac
}

path_of() {
    case $1 in
        small) echo "/" ;;
        # The origin echoes the request target, so a ~6 KiB path makes a
        # ~6 KiB request line and a ~6 KiB response body.
        big) printf '/big/%s' "$(head -c 6000 /dev/zero | tr '\0' 'x')" ;;
        *) die "unknown scenario $1 (small | big)" ;;
    esac
}

# Sanity: every proxy passes the request to the origin and the answer back.
for scen in $SCENARIOS; do
    path=$(path_of "$scen")
    for t in "${TARGETS[@]}"; do
        body=$(curl -sS --max-time 5 -D "$TMP/check.headers" "http://127.0.0.1:$(port_of "$t")$path") \
            || die "$t: request for scenario $scen failed"
        grep -q "^HTTP/1.1 200" "$TMP/check.headers" || die "$t: scenario $scen: $(head -1 "$TMP/check.headers")"
        grep -q "hello from origin 127.0.0.1:$ORIGIN_PORT" <<<"$body" || die "$t: answer not from the origin: $body"
        printf '%s\t%s\t%s\n' "$scen" "$t" "${#body}" >>"$TMP/bodies.tsv"
    done
done

# ---------------------------------------------------------------- measure ---
# run_wrk TARGET SCENARIO DURATION OUTFILE
run_wrk() { wrk_run "$4" "$1" "$3" "http://127.0.0.1:$(port_of "$1")$(path_of "$2")"; }

echo -e "scenario\ttarget\tround\trps\tp99_ms\terrors\tnon2xx" >"$TMP/results.tsv"
for scen in $SCENARIOS; do
    if [ "$WARMUP" != 0 ]; then
        for t in "${TARGETS[@]}"; do
            log "warm-up $scen $t ($WARMUP)"
            run_wrk "$t" "$scen" "$WARMUP" "$TMP/warmup.$scen.$t.txt"
        done
    fi
    for round in $(seq "$REPEATS"); do
        for t in "${TARGETS[@]}"; do
            out="$TMP/wrk.$scen.$t.$round.txt"
            run_wrk "$t" "$scen" "$DURATION" "$out"
            read -r rps p99 err non2xx _ < <(parse_wrk "$out") || { cat "$out" >&2; die "cannot parse wrk output"; }
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$t" "$round" "$rps" "$p99" "$err" "$non2xx" >>"$TMP/results.tsv"
            log "$(printf 'round %d/%d %-5s %-8s %10.0f req/s  p99 %8.2f ms  errors %d  non-2xx %d' \
                "$round" "$REPEATS" "$scen" "$t" "$rps" "$p99" "$err" "$non2xx")"
        done
    done
done

# ----------------------------------------------------------------- report ---
# results.tsv columns, for median and column_sum (lib.sh): 4=rps 5=p99.

label() {
    case $1 in
        direct) echo "origin direct (no proxy)" ;; sluice) echo "sluice" ;;
        nginx) echo "nginx" ;; haproxy) echo "HAProxy" ;;
    esac
}

echo
echo "## Load benchmark: sluice vs nginx vs HAProxy"
echo
machine_lines
echo "- nginx: $(version_of nginx); HAProxy: $(version_of haproxy); wrk: $(version_of wrk)"
echo "- settings: WORKERS=$WORKERS (sluice \`[server] workers\`, nginx \`worker_processes\`, HAProxy \`nbthread\`),"
echo "  \`wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION --latency\`, REPEATS=$REPEATS interleaved rounds (direct, sluice, nginx, haproxy), warm-up $WARMUP;"
echo "  origin: \`demo --origin-only\` (hyper, tokio default threads), everything on 127.0.0.1 on this one machine, wrk included"
for scen in $SCENARIOS; do
    sizes=$(awk -F'\t' -v s="$scen" '$1 == s { printf "%s%s %d B", sep, $2, $3; sep = ", " }' "$TMP/bodies.tsv")
    case $scen in
        small) desc="GET / (response body: $sizes)" ;;
        big) desc="GET of a ~6 KiB path that the origin echoes (response body: $sizes)" ;;
    esac
    s_rps=$(median "$scen" sluice 4)
    s_p99=$(median "$scen" sluice 5)
    echo
    echo "### Scenario \`$scen\`: $desc"
    echo
    echo "| target | req/s median | p99 median | req/s vs sluice |"
    echo "|---|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        rps=$(median "$scen" "$t" 4)
        p99=$(median "$scen" "$t" 5)
        printf '| %s | %.0f | %.2f ms | %s× |\n' "$(label "$t")" "$rps" "$p99" "$(ratio "$rps" "$s_rps")"
    done
    echo
    echo "Medians of $REPEATS rounds; \"req/s vs sluice\" is the target's req/s divided by sluice's."
    echo
    echo "| sluice ÷ | req/s | p99 |"
    echo "|---|---:|---:|"
    for t in nginx haproxy direct; do
        printf '| %s | %s | %s |\n' "$(label "$t")" \
            "$(ratio "$s_rps" "$(median "$scen" "$t" 4)")" "$(ratio "$s_p99" "$(median "$scen" "$t" 5)")"
    done
    echo
    echo "(req/s ratio above 1: sluice serves more; p99 ratio below 1: sluice's tail is shorter.)"
    bad=$(run_errors "$scen" "${TARGETS[@]}")
    [ -z "$bad" ] || echo "**WARNING** errors during the runs:$bad"
done
rounds_details
