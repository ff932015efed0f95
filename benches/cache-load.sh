#!/usr/bin/env bash
# Cache and compression benchmark: sluice against nginx and Varnish on the same
# machine, in the same run, in front of the same origin (the demo origin,
# `demo --origin-only`, which serves a fixed ~20 KiB text/html page as
# /static/page20k with `Cache-Control: public, max-age=60` and as
# /nostore/page20k with `Cache-Control: no-store`).
#
#   bash benches/cache-load.sh                           # defaults below
#   DURATION=5s REPEATS=3 bash benches/cache-load.sh
#   SCENARIOS="hit hit-br" bash benches/cache-load.sh    # a subset
#
# Scenarios (each one's targets run with the same wrk command, interleaved
# over REPEATS rounds, so that noise on a shared machine falls on all alike):
#   hit            cached hit of /static/page20k, identity (no Accept-Encoding):
#                  sluice (cache = true) vs nginx (proxy_cache) vs Varnish (malloc)
#   hit-br         the same hit with `Accept-Encoding: br` through sluice
#                  (cache = true, compress = true), against sluice's identity
#                  hit (same rounds); the target is br >= 0.9x identity
#   hit-gzip       the same hit with `Accept-Encoding: gzip`: sluice (stores one
#                  gzip copy) vs nginx (gzips the cached page on every request)
#                  vs Varnish (stores gzip: beresp.do_gzip)
#   gzip-uncached  /nostore/page20k with `Accept-Encoding: gzip` (compressed on
#                  every request, gzip level 1 on both): sluice vs nginx, with
#                  the proxy's CPU time per request; the target is sluice below nginx
#   observe-cost   sluice identity hits with `[admin]` + `[access_log]` (JSON to
#                  a file in the temp dir) vs without both; the bar is a cost
#                  under 5% of requests/s. For scale, the same pair for nginx
#                  with an access log of the same fields (`buffer=64k`). Its
#                  four targets run pinned (OBS_PIN): the proxies on one half
#                  of the CPUs, wrk on the other, so that what is measured is
#                  the proxy's own cost. Sharing the cores with wrk inflates
#                  any extra work in the proxy about twofold here: a slower
#                  proxy leaves wrk asleep more often, and waking it is paid
#                  for on the proxy's side of loopback.
#
# CPU time per request: utime + stime from /proc/<pid>/stat of the proxy's
# processes (sluice: its one process; nginx: master and every child; Varnish:
# manager and child), read right before and right after each wrk run and
# divided by the requests wrk counted. It is reported for every run.
#
# Fairness: the same worker count (sluice `[server] workers`, nginx
# `worker_processes`; Varnish serves each client connection on a thread of its
# own, so it gets one thread pool, `thread_pools=1`, with enough threads for
# every wrk connection instead), keep-alive to the client and to the origin
# (pools of up to 64 idle connections), no access log (but for observe-cost's
# "with" sluice), gzip level 1 everywhere, min size 1 KiB for compression.
#
# Environment (defaults in brackets):
#   WORKERS [2]             worker processes/threads of sluice and nginx
#   VARNISH_THREADS [100]   Varnish thread_pool_min (thread_pool_max is 5x)
#   DURATION [10s]          wrk duration per measurement
#   REPEATS [3]             rounds
#   WARMUP [2s]             one unmeasured wrk run per target before the rounds ("0" skips)
#   WRK_THREADS [2]         wrk -t
#   WRK_CONNS [64]          wrk -c
#   SCENARIOS [hit hit-br hit-gzip gzip-uncached observe-cost]
#   PORT_BASE [19100]       origin PORT_BASE+1; sluice +81 (cache), +82 (cache +
#                           compress); nginx +85; Varnish +86 (identity), +87 (gzip);
#                           observe-cost: sluice +89 (cache) and +83 (cache + admin
#                           + access log; admin on +84), nginx +90 (+88 with an
#                           access log) (all 127.0.0.1)
#   SKIP_INSTALL [0]        1: never call apt-get
#   SKIP_BUILD [0]          1: use the existing release binaries
#   KEEP_TMP [0]            1: keep the temp dir (configs, server logs, raw wrk output)
#   OBS_PIN [auto]          observe-cost: 1 runs its four proxies on the first half
#                           of the allowed CPUs (taskset; `workers`/`worker_processes`
#                           = that many) and its wrk on the rest; 0 shares every CPU
#                           with WORKERS workers, as the other scenarios do; auto = 1
#                           when taskset exists and at least 2 CPUs are allowed
#   OBS_LOG_PATH [temp file] observe-cost's access log; "/dev/null" leaves out the
#                           kernel's cost of writing the file, to see sluice's own

set -euo pipefail

WORKERS=${WORKERS:-2}
VARNISH_THREADS=${VARNISH_THREADS:-100}
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
SCENARIOS=${SCENARIOS:-hit hit-br hit-gzip gzip-uncached observe-cost}
PORT_BASE=${PORT_BASE:-19100}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

ORIGIN_PORT=$((PORT_BASE + 1))
SLUICE_PORT=$((PORT_BASE + 81))
SLUICE_Z_PORT=$((PORT_BASE + 82))
SLUICE_OBS_PORT=$((PORT_BASE + 83))
SLUICE_OBS_ADMIN_PORT=$((PORT_BASE + 84))
NGINX_PORT=$((PORT_BASE + 85))
VARNISH_PORT=$((PORT_BASE + 86))
VARNISH_GZ_PORT=$((PORT_BASE + 87))
NGINX_LOG_PORT=$((PORT_BASE + 88))
SLUICE_BARE_PORT=$((PORT_BASE + 89))
NGINX_BARE_PORT=$((PORT_BASE + 90))
PAGE=/static/page20k
NOSTORE_PAGE=/nostore/page20k

# log, die, install_missing, split_cpus, the cleanup on exit, wait_ready,
# run_nginx, run_varnishd, the nginx config pieces, is_hit, wrk_run,
# parse_wrk, median, ...; changes to the repo root.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# observe-cost's CPU split (split_cpus): the proxies on SERVER_CPUS (prefix
# PIN_SERVER), wrk on CLIENT_CPUS (PIN_CLIENT), and the proxies' worker count
# OBS_WORKERS, one per CPU of theirs.
OBS_PIN=${OBS_PIN:-auto}
split_cpus OBS_PIN
OBS_WORKERS=$WORKERS
[ "$OBS_PIN" != 1 ] || OBS_WORKERS=$((${#ALLOWED_CPUS[@]} / 2))

for scen in $SCENARIOS; do
    case $scen in
        hit | hit-br | hit-gzip | gzip-uncached | observe-cost) ;;
        *) die "unknown scenario $scen (hit | hit-br | hit-gzip | gzip-uncached | observe-cost)" ;;
    esac
done

# ---------------------------------------------------------------- install ---
install_missing --nginx-light "nginx varnish" nginx varnishd:varnish wrk curl gzip
# Varnish compiles its VCL with the system C compiler.
command -v cc >/dev/null || die "varnishd needs a C compiler (cc) to compile VCL; install gcc"

# ------------------------------------------------------------------ build ---
build_bins

# ---------------------------------------------------------------- cleanup ---
make_tmp sluice-cache-load

# ---------------------------------------------------------------- servers ---
ports_free "$ORIGIN_PORT" "$SLUICE_PORT" "$SLUICE_Z_PORT" "$SLUICE_OBS_PORT" "$SLUICE_OBS_ADMIN_PORT" \
    "$NGINX_PORT" "$VARNISH_PORT" "$VARNISH_GZ_PORT" "$NGINX_LOG_PORT" "$SLUICE_BARE_PORT" "$NGINX_BARE_PORT"
start_origin

# --- sluice: four processes of the same binary, one per configuration.
# sluice_config PORT EXTRA_TOP EXTRA_ROUTES [WORKERS]: the common parts plus
# the variant's own.
sluice_config() {
    local port=$1 top=$2 routes=$3 workers=${4:-$WORKERS}
    cat <<EOF
[server]
workers = $workers
drain_timeout = "1s"

[[listener]]
name = "bench"
listen = "127.0.0.1:$port"

[cache]
max_size = "256MiB"
$top
$routes

[pool.origin]
servers = [ { addr = "127.0.0.1:$ORIGIN_PORT" } ]
max_idle_per_server = 64
EOF
}

# (1) cache only.
CACHE_ROUTE='
[[route]]
name = "all"
path_prefix = "/"
pool = "origin"
cache = true'
sluice_config "$SLUICE_PORT" "" "$CACHE_ROUTE" >"$TMP/sluice.toml"

# (2) cache + compression; /nostore/ compresses without the cache, as nginx's
# /nostore/ location has no proxy_cache.
sluice_config "$SLUICE_Z_PORT" '
[compression]
algorithms = ["br", "zstd", "gzip"]
min_size = 1024
types = ["text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml"]
level = "fast"' '
[[route]]
name = "nostore"
path_prefix = "/nostore/"
pool = "origin"
compress = true

[[route]]
name = "all"
path_prefix = "/"
pool = "origin"
cache = true
compress = true' >"$TMP/sluice-z.toml"

# (3) as (1) plus the admin listener and the access log (observe-cost "with"),
# and (4) as (1) (observe-cost "without"): both with OBS_WORKERS workers.
ACCESS_LOG=${OBS_LOG_PATH:-$TMP/access.log}
# A regular file is checked, truncated between runs and counted; anything
# else (/dev/null) is only written to.
LOG_IS_FILE=1
[ -z "${OBS_LOG_PATH:-}" ] || [ ! -e "$OBS_LOG_PATH" ] || [ -f "$OBS_LOG_PATH" ] || LOG_IS_FILE=0
sluice_config "$SLUICE_OBS_PORT" "
[admin]
listen = \"127.0.0.1:$SLUICE_OBS_ADMIN_PORT\"

[access_log]
format = \"json\"
path = \"$ACCESS_LOG\"" "$CACHE_ROUTE" "$OBS_WORKERS" >"$TMP/sluice-obs.toml"
sluice_config "$SLUICE_BARE_PORT" "" "$CACHE_ROUTE" "$OBS_WORKERS" >"$TMP/sluice-bare.toml"

for v in sluice sluice-z sluice-obs sluice-bare; do
    "$SLUICE_BIN" --check --config "$TMP/$v.toml" >"$TMP/$v.check" 2>&1 \
        || { cat "$TMP/$v.check" >&2; die "$v config invalid: $TMP/$v.toml"; }
done
for v in sluice sluice-z sluice-obs sluice-bare; do
    pin=()
    case $v in sluice-obs | sluice-bare) pin=("${PIN_SERVER[@]}") ;; esac
    RUST_LOG=warn "${pin[@]}" "$SLUICE_BIN" --config "$TMP/$v.toml" >"$TMP/$v.log" 2>&1 &
    PIDS+=($!)
    PID_OF[$v]=$!
done
wait_ready sluice "$SLUICE_PORT" "${PID_OF[sluice]}" "$TMP/sluice.log"
wait_ready sluice-z "$SLUICE_Z_PORT" "${PID_OF[sluice-z]}" "$TMP/sluice-z.log"
wait_ready sluice-obs "$SLUICE_OBS_PORT" "${PID_OF[sluice-obs]}" "$TMP/sluice-obs.log"
wait_ready sluice-bare "$SLUICE_BARE_PORT" "${PID_OF[sluice-bare]}" "$TMP/sluice-bare.log"
curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$SLUICE_OBS_ADMIN_PORT/healthz" \
    || die "sluice-obs: admin listener not answering on 127.0.0.1:$SLUICE_OBS_ADMIN_PORT"

# --- nginx: two instances of one configuration; /static/ (everything but
# /nostore/) through proxy_cache, gzip on for all (it only acts on requests
# with Accept-Encoding). "nginx" serves the other scenarios; "nginx-obs"
# serves observe-cost, pinned like its sluices, twice: without and with an
# access log.
# start_nginx NAME WORKERS SERVERS [PIN...]: an instance in $TMP/NAME with
# SERVERS (server blocks) in its http block, started under PIN.
start_nginx() {
    local name=$1 workers=$2 servers=$3
    shift 3
    write_nginx_conf "$TMP/$name" "$workers" 4096 <<EOF
    sendfile on;
    tcp_nopush on;

$(nginx_cache_gzip "$TMP/$name")

$(nginx_upstream "$ORIGIN_PORT")

    # The fields of sluice's JSON line (observe-cost).
    log_format sluicejson escape=json '{"ts":"\$time_iso8601","client":"\$remote_addr",'
        '"method":"\$request_method","host":"\$host","path":"\$request_uri",'
        '"proto":"\$server_protocol","status":\$status,"bytes":\$body_bytes_sent,'
        '"duration_ms":\$request_time,"upstream":"\$upstream_addr",'
        '"upstream_ms":"\$upstream_response_time","cache":"\$upstream_cache_status",'
        '"request_id":"\$request_id"}';
$servers
EOF
    run_nginx "$name" "$@"
}
# The locations, shared by every server block of both instances.
cat >"$TMP/server.conf" <<EOF
$(nginx_proxy_headers "")
add_header Via "1.1 nginx" always;

location /nostore/ {
    proxy_pass http://origin;
}

location / {
    proxy_pass http://origin;
    proxy_cache bench;
    # The origin says max-age=60, which nginx honours anyway; this
    # says the same for responses without Cache-Control.
    proxy_cache_valid 200 60s;
    # One request upstream per expired key, like sluice's coalescing.
    proxy_cache_lock on;
    add_header Via "1.1 nginx" always;
    add_header X-Cache-Status \$upstream_cache_status always;
}
EOF
NGINX_ACCESS_LOG=$TMP/nginx-obs/access.log
start_nginx nginx "$WORKERS" "
    server {
        listen 127.0.0.1:$NGINX_PORT;
        include $TMP/server.conf;
    }"
start_nginx nginx-obs "$OBS_WORKERS" "
    server {
        listen 127.0.0.1:$NGINX_BARE_PORT;
        include $TMP/server.conf;
    }
    server {
        listen 127.0.0.1:$NGINX_LOG_PORT;
        access_log $NGINX_ACCESS_LOG sluicejson buffer=64k;
        include $TMP/server.conf;
    }" "${PIN_SERVER[@]}"
PID_OF[nginx-bare]=${PID_OF[nginx-obs]}
PID_OF[nginx-log]=${PID_OF[nginx-obs]}
wait_ready nginx "$NGINX_PORT" "${PID_OF[nginx]}" "$TMP/nginx/error.log"
wait_ready nginx-obs "$NGINX_BARE_PORT" "${PID_OF[nginx-obs]}" "$TMP/nginx-obs/error.log"

# --- Varnish: two instances, malloc storage. "varnish" keeps what the origin
# sends (identity); "varnish-gz" gzips text on the way in (beresp.do_gzip) and
# so stores gzip, served as is to gzip clients (http_gzip_support is on by
# default). One instance for both would store gzip only and gunzip every
# identity hit.
start_varnish() {
    local name=$1 port=$2 vcl=$3
    shift 3
    cat >"$TMP/$name.vcl" <<EOF
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "$ORIGIN_PORT";
}
$vcl
EOF
    run_varnishd "$name" "$port" -- "$@"
    wait_ready "$name" "$port" "${PID_OF[$name]}" "$TMP/$name.log"
}
start_varnish varnish "$VARNISH_PORT" ""
start_varnish varnish-gz "$VARNISH_GZ_PORT" '
sub vcl_backend_response {
    if (beresp.http.Content-Type ~ "^text/") {
        set beresp.do_gzip = true;
    }
}' -p gzip_level=1

# ---------------------------------------------------------------- targets ---
# A target is SERVER/ENCODING: which proxy, and what the request's
# Accept-Encoding asks for ("identity": no Accept-Encoding header at all).
targets_of() {
    case $1 in
        hit) echo "sluice/identity nginx/identity varnish/identity" ;;
        hit-br) echo "sluice/identity sluice-z/identity sluice-z/br" ;;
        hit-gzip) echo "sluice-z/gzip nginx/gzip varnish-gz/gzip" ;;
        gzip-uncached) echo "sluice-z/gzip nginx/gzip" ;;
        observe-cost) echo "sluice-bare/identity sluice-obs/identity nginx-bare/identity nginx-log/identity" ;;
    esac
}
path_of() { if [ "$1" = gzip-uncached ]; then echo "$NOSTORE_PAGE"; else echo "$PAGE"; fi; }
server_of() { echo "${1%/*}"; }
encoding_of() { echo "${1#*/}"; }
port_of() {
    case $(server_of "$1") in
        sluice) echo "$SLUICE_PORT" ;; sluice-z) echo "$SLUICE_Z_PORT" ;;
        sluice-obs) echo "$SLUICE_OBS_PORT" ;; sluice-bare) echo "$SLUICE_BARE_PORT" ;;
        nginx) echo "$NGINX_PORT" ;; nginx-bare) echo "$NGINX_BARE_PORT" ;; nginx-log) echo "$NGINX_LOG_PORT" ;;
        varnish) echo "$VARNISH_PORT" ;; varnish-gz) echo "$VARNISH_GZ_PORT" ;;
    esac
}

label() {
    local scen=$1 server enc what
    server=$(server_of "$2")
    enc=$(encoding_of "$2")
    case $server in
        sluice) what="sluice (cache)" ;;
        sluice-z)
            if [ "$scen" = gzip-uncached ]; then what="sluice (compress, level fast)"
            else what="sluice (cache + compress)"; fi ;;
        sluice-bare) what="sluice (cache)" ;;
        sluice-obs) what="sluice (cache + admin + access log)" ;;
        nginx)
            if [ "$scen" = gzip-uncached ]; then what="nginx (gzip level 1)"
            elif [ "$enc" = gzip ]; then what="nginx (proxy_cache + gzip level 1)"
            else what="nginx (proxy_cache)"; fi ;;
        nginx-bare) what="nginx (proxy_cache)" ;;
        nginx-log) what="nginx (proxy_cache + JSON access log, buffer=64k)" ;;
        varnish) what="Varnish (malloc)" ;;
        varnish-gz) what="Varnish (malloc, do_gzip)" ;;
    esac
    echo "$what, $enc"
}

# enc_args ENCODING -> curl/wrk header arguments, one per line.
enc_header() { [ "$1" = identity ] || printf 'Accept-Encoding: %s' "$1"; }

# ------------------------------------------------------------ sanity checks ---
# The reference page, straight from the origin.
curl -sSf --max-time 5 -o "$TMP/page.ref" "http://127.0.0.1:$ORIGIN_PORT$PAGE" || die "origin: no $PAGE"
curl -sSf --max-time 5 -o "$TMP/nostore.ref" "http://127.0.0.1:$ORIGIN_PORT$NOSTORE_PAGE" || die "origin: no $NOSTORE_PAGE"
cmp -s "$TMP/page.ref" "$TMP/nostore.ref" || die "origin: $PAGE and $NOSTORE_PAGE differ"
PAGE_BYTES=$(wc -c <"$TMP/page.ref")
[ "$PAGE_BYTES" -gt 16000 ] || die "origin: $PAGE is only $PAGE_BYTES bytes; rebuild the demo example"

# check SCENARIO TARGET: two requests; the second must be 200, carry the right
# Content-Encoding, decode to the origin's page, and be a cache hit (hit
# scenarios) or not (gzip-uncached). Records the wire size of the body.
check() {
    local scen=$1 t=$2 server enc url hdr i code ce size
    server=$(server_of "$t")
    enc=$(encoding_of "$t")
    url="http://127.0.0.1:$(port_of "$t")$(path_of "$scen")"
    hdr=$(enc_header "$enc")
    for i in 1 2; do
        # --compressed decodes what the server sent; -H keeps our Accept-Encoding
        # (without one, curl would send its own).
        read -r code size < <(curl -sS --max-time 5 ${hdr:+--compressed -H "$hdr"} \
            -D "$TMP/check.headers" -o "$TMP/check.body" -w '%{http_code} %{size_download}\n' "$url") \
            || die "$t: request $i for scenario $scen failed"
    done
    [ "$code" = 200 ] || die "$scen $t: status $code (headers: $(tr -d '\r' <"$TMP/check.headers"))"
    ce=$(awk -F': *' 'tolower($1) == "content-encoding" { gsub(/\r/, "", $2); print tolower($2) }' "$TMP/check.headers")
    if [ "$enc" = identity ]; then
        [ -z "$ce" ] || die "$scen $t: Content-Encoding $ce on a request without Accept-Encoding"
    else
        [ "$ce" = "$enc" ] || die "$scen $t: Content-Encoding '${ce:-none}', wanted $enc (headers: $(tr -d '\r' <"$TMP/check.headers"))"
    fi
    cmp -s "$TMP/check.body" "$TMP/page.ref" || die "$scen $t: decoded body differs from the origin's page"
    if [ "$scen" = gzip-uncached ]; then
        is_hit "$server" "$TMP/check.headers" && die "$scen $t: answered from a cache: $(tr -d '\r' <"$TMP/check.headers")"
    else
        is_hit "$server" "$TMP/check.headers" || die "$scen $t: second request is not a cache hit: $(tr -d '\r' <"$TMP/check.headers")"
    fi
    printf '%s\t%s\t%s\n' "$scen" "$t" "$size" >>"$TMP/bodies.tsv"
}

for scen in $SCENARIOS; do
    for t in $(targets_of "$scen"); do check "$scen" "$t"; done
done
# The "with" sluice really logs.
[ ! -e "$ACCESS_LOG" ] || [ "$LOG_IS_FILE" = 0 ] || for _ in $(seq 20); do [ -s "$ACCESS_LOG" ] && break; sleep 0.1; done
if [[ " $SCENARIOS " == *" observe-cost "* ]] && [ "$LOG_IS_FILE" = 1 ]; then
    [ -s "$ACCESS_LOG" ] || die "sluice-obs: nothing in the access log $ACCESS_LOG"
fi
log "sanity checks passed"

# ---------------------------------------------------------------- measure ---
# cpu_ticks SERVER: utime + stime (clock ticks) of the server's process and of
# its descendants (nginx workers and cache processes, the Varnish child).
cpu_ticks() { tree_cpu_ticks "${PID_OF[$1]}"; }

# run_wrk SCENARIO TARGET DURATION OUTFILE -> "cpu_ticks" on stdout
run_wrk() {
    local scen=$1 t=$2 server hdr before after
    server=$(server_of "$t")
    hdr=$(enc_header "$(encoding_of "$t")")
    [ "$server" != sluice-obs ] || [ "$LOG_IS_FILE" = 0 ] || : >"$ACCESS_LOG" # opened O_APPEND: truncating is safe
    [ "$server" != nginx-log ] || : >"$NGINX_ACCESS_LOG"
    WRK_PREFIX=()
    case $server in sluice-bare | sluice-obs | nginx-bare | nginx-log) WRK_PREFIX=("${PIN_CLIENT[@]}") ;; esac
    before=$(cpu_ticks "$server")
    wrk_run "$4" "$t" "$3" "http://127.0.0.1:$(port_of "$t")$(path_of "$scen")" ${hdr:+-H "$hdr"}
    after=$(cpu_ticks "$server")
    echo $((after - before))
}

START=$(date +%s)
echo -e "scenario\ttarget\tround\trps\tp99_ms\terrors\tnon2xx\trequests\tcpu_ticks\tcpu_us_per_req" >"$TMP/results.tsv"
LOG_LINES=
LOG_REQS=
for scen in $SCENARIOS; do
    if [ "$WARMUP" != 0 ]; then
        for t in $(targets_of "$scen"); do
            log "warm-up $scen $t ($WARMUP)"
            run_wrk "$scen" "$t" "$WARMUP" "$TMP/warmup.$scen.${t//\//_}.txt" >/dev/null
        done
    fi
    for round in $(seq "$REPEATS"); do
        for t in $(targets_of "$scen"); do
            out="$TMP/wrk.$scen.${t//\//_}.$round.txt"
            ticks=$(run_wrk "$scen" "$t" "$DURATION" "$out")
            read -r rps p99 err non2xx reqs < <(parse_wrk "$out") || { cat "$out" >&2; die "cannot parse wrk output"; }
            cpu=$(awk -v t="$ticks" -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", n ? t * 1e6 / hz / n : 0 }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$t" "$round" "$rps" "$p99" "$err" \
                "$non2xx" "$reqs" "$ticks" "$cpu" >>"$TMP/results.tsv"
            if [ "$(server_of "$t")" = sluice-obs ]; then
                sleep 0.5 # the log writer thread catches up
                LOG_LINES=$([ "$LOG_IS_FILE" = 1 ] && wc -l <"$ACCESS_LOG" || echo "(not counted: $ACCESS_LOG)")
                LOG_REQS=$reqs
            fi
            log "$(printf 'round %d/%d %-13s %-18s %9.0f req/s  p99 %7.2f ms  cpu %6.2f us/req  errors %d  non-2xx %d' \
                "$round" "$REPEATS" "$scen" "$t" "$rps" "$p99" "$cpu" "$err" "$non2xx")"
        done
    done
done
ELAPSED=$(($(date +%s) - START))

# ----------------------------------------------------------------- report ---
# results.tsv columns, for median and column_sum (lib.sh): 4=rps 5=p99
# 10=cpu_us_per_req.
# per_round SCENARIO TARGET_A TARGET_B COLUMN -> A / B of each round, one a
# line in round order, unrounded; "n/a" for a round B lacks.
per_round() {
    awk -F'\t' -v s="$1" -v a="$2" -v b="$3" -v c="$4" '
        NR > 1 && $1 == s && $2 == a { va[$3] = $c }
        NR > 1 && $1 == s && $2 == b { vb[$3] = $c }
        END { for (r = 1; r in va; r++) if (vb[r]) printf "%.17g\n", va[r] / vb[r]; else print "n/a" }' "$TMP/results.tsv"
}
# round_ratios SCENARIO TARGET_A TARGET_B COLUMN -> "r1, r2, ..." (A / B per round)
round_ratios() {
    per_round "$@" | awk '{ printf "%s%s", sep, ($1 == "n/a" ? $1 : sprintf("%.2f", $1)); sep = ", " }'
}
# paired_ratio SCENARIO TARGET_A TARGET_B COLUMN -> the median of the
# per-round A / B ratios, unrounded. Rounds interleave the targets, so the
# two runs of a round share the machine's state; a drift of the shared
# machine between rounds moves each target's own median but not a round's
# ratio.
paired_ratio() {
    per_round "$@" | grep -v '^n/a$' | median_of_lines | awk '{ printf "%.3f", $1 }'
}
# verdict OK_CONDITION_AS_AWK_EXPR VALUE
verdict() { awk -v x="$2" "BEGIN { if ($1) print \"**met**\"; else print \"**missed**\" }"; }
wire_bytes() { awk -F'\t' -v s="$1" -v t="$2" '$1 == s && $2 == t { print $3 }' "$TMP/bodies.tsv"; }

# table SCENARIO REF_TARGET: one row per target, ratios to REF_TARGET.
table() {
    local scen=$1 ref=$2 t rps p99 cpu
    local r_rps r_p99 r_cpu
    r_rps=$(median "$scen" "$ref" 4)
    r_p99=$(median "$scen" "$ref" 5)
    r_cpu=$(median "$scen" "$ref" 10)
    echo "| target | body on the wire | req/s median | p99 median | proxy CPU per request | req/s ÷ ref | p99 ÷ ref | CPU/req ÷ ref |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for t in $(targets_of "$scen"); do
        rps=$(median "$scen" "$t" 4)
        p99=$(median "$scen" "$t" 5)
        cpu=$(median "$scen" "$t" 10)
        printf '| %s%s | %s B | %.0f | %.2f ms | %.1f µs | %s× | %s× | %s× |\n' "$(label "$scen" "$t")" \
            "$([ "$t" = "$ref" ] && echo " (ref)")" "$(wire_bytes "$scen" "$t")" "$rps" "$p99" "$cpu" \
            "$(ratio "$rps" "$r_rps")" "$(ratio "$p99" "$r_p99")" "$(ratio "$cpu" "$r_cpu")"
    done
    echo
    echo "Medians of $REPEATS rounds; \"÷ ref\" divides a target's median by the reference row's."
    local bad
    # shellcheck disable=SC2046 # targets_of gives a word list
    bad=$(run_errors "$scen" $(targets_of "$scen"))
    [ -z "$bad" ] || { echo; echo "**WARNING** errors during the runs:$bad"; }
    return 0
}

# sluice_vs SCENARIO SLUICE_TARGET OTHER...: sluice ÷ each other target.
sluice_vs() {
    local scen=$1 s=$2 o
    shift 2
    echo
    echo "| sluice ÷ | req/s | p99 | CPU/req | req/s per round |"
    echo "|---|---:|---:|---:|---|"
    for o in "$@"; do
        printf '| %s | %s | %s | %s | %s |\n' "$(label "$scen" "$o")" \
            "$(ratio "$(median "$scen" "$s" 4)" "$(median "$scen" "$o" 4)")" \
            "$(ratio "$(median "$scen" "$s" 5)" "$(median "$scen" "$o" 5)")" \
            "$(ratio "$(median "$scen" "$s" 10)" "$(median "$scen" "$o" 10)")" \
            "$(round_ratios "$scen" "$s" "$o" 4)"
    done
    echo
    echo "(req/s above 1: sluice serves more; p99 and CPU/req below 1: sluice's tail is shorter, it spends less CPU per request.)"
}

echo
echo "## Cache and compression benchmark: sluice vs nginx vs Varnish"
echo
machine_lines
echo "- nginx: $(version_of nginx); Varnish: $(version_of varnishd); wrk: $(version_of wrk)"
echo "- settings: WORKERS=$WORKERS (sluice \`[server] workers\`, nginx \`worker_processes\`; Varnish: \`thread_pools=1\`,"
echo "  \`thread_pool_min=$VARNISH_THREADS\`, \`thread_pool_max=$((VARNISH_THREADS * 5))\`, as it serves each connection on a thread of its own),"
echo "  \`wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION --latency\`, REPEATS=$REPEATS interleaved rounds per scenario, warm-up $WARMUP; measuring took ${ELAPSED}s"
echo "- origin: \`demo --origin-only\`, a $PAGE_BYTES-byte text/html page ($PAGE: \`public, max-age=60\`; $NOSTORE_PAGE: \`no-store\`);"
echo "  everything on 127.0.0.1 on this one machine, wrk included; gzip level 1 everywhere (sluice \`level = \"fast\"\`,"
echo "  nginx \`gzip_comp_level 1\`, Varnish \`gzip_level=1\`); nginx's cache is on disk (page cache), Varnish's and sluice's in memory"
echo "- proxy CPU per request: utime+stime of the proxy's processes (nginx master + workers, Varnish manager + child)"
echo "  over a wrk run ÷ the requests wrk counted (clock tick $((1000 / CLK_TCK)) ms)"

for scen in $SCENARIOS; do
    echo
    case $scen in
        hit)
            echo "### \`hit\`: cached $PAGE, identity (no Accept-Encoding)"
            echo
            table hit sluice/identity
            sluice_vs hit sluice/identity nginx/identity varnish/identity
            ;;
        hit-br)
            echo "### \`hit-br\`: cached $PAGE with \`Accept-Encoding: br\` (sluice's stored br copy)"
            echo
            table hit-br sluice/identity
            br=$(median hit-br sluice-z/br 4)
            id=$(median hit-br sluice/identity 4)
            idz=$(median hit-br sluice-z/identity 4)
            r=$(ratio "$br" "$id")
            echo
            echo "- br hit ÷ identity hit (sluice \`cache\`): **${r}×** (per round: $(round_ratios hit-br sluice-z/br sluice/identity 4));" \
                "target ≥ 0.9×: $(verdict 'x >= 0.9' "$r")"
            echo "- br hit ÷ identity hit on the same \`cache + compress\` sluice: $(ratio "$br" "$idz")×" \
                "(per round: $(round_ratios hit-br sluice-z/br sluice-z/identity 4))"
            ;;
        hit-gzip)
            echo "### \`hit-gzip\`: cached $PAGE with \`Accept-Encoding: gzip\`"
            echo
            echo "sluice and Varnish send a stored gzip copy; nginx gzips the cached page on every request."
            echo
            table hit-gzip sluice-z/gzip
            sluice_vs hit-gzip sluice-z/gzip nginx/gzip varnish-gz/gzip
            ;;
        gzip-uncached)
            echo "### \`gzip-uncached\`: $NOSTORE_PAGE (\`no-store\`) with \`Accept-Encoding: gzip\`, compressed on every request"
            echo
            table gzip-uncached sluice-z/gzip
            sluice_vs gzip-uncached sluice-z/gzip nginx/gzip
            r=$(ratio "$(median gzip-uncached sluice-z/gzip 10)" "$(median gzip-uncached nginx/gzip 10)")
            echo
            echo "- CPU per request, sluice ÷ nginx: **${r}×** (per round: $(round_ratios gzip-uncached sluice-z/gzip nginx/gzip 10));" \
                "target < 1×: $(verdict 'x < 1' "$r")"
            ;;
        observe-cost)
            echo "### \`observe-cost\`: sluice identity hits with \`[admin]\` + \`[access_log]\` (JSON, to $([ "$LOG_IS_FILE" = 1 ] && echo "a file" || echo "$ACCESS_LOG")) vs without"
            echo
            if [ "$OBS_PIN" = 1 ]; then
                echo "Pinned: the four proxies on CPUs $SERVER_CPUS with $OBS_WORKERS workers each, wrk on CPUs $CLIENT_CPUS."
            else
                echo "Not pinned (OBS_PIN=0): proxies and wrk share every CPU; $OBS_WORKERS workers each."
            fi
            echo
            table observe-cost sluice-bare/identity
            # The verdict takes the median of the rounds' own ratios (see
            # paired_ratio); the ratio of the two medians is shown too.
            r=$(paired_ratio observe-cost sluice-obs/identity sluice-bare/identity 4)
            cost=$(awk -v r="$r" 'BEGIN { printf "%.1f", (1 - r) * 100 }')
            with=$(median observe-cost sluice-obs/identity 4)
            without=$(median observe-cost sluice-bare/identity 4)
            r_medians=$(awk -v a="$with" -v b="$without" 'BEGIN { printf "%.3f", a / b }')
            echo
            echo "- req/s with ÷ without, median of the rounds' ratios: **${r}×** (per round: $(round_ratios observe-cost sluice-obs/identity sluice-bare/identity 4))," \
                "a cost of ${cost}%; bar < 5%: $(verdict 'x < 5' "$cost"); the ratio of the two medians: ${r_medians}×"
            echo "- metrics are recorded in both (they do not depend on \`[admin]\`); the access log had $LOG_LINES lines after the last"
            dropped=$(curl -s --max-time 2 "http://127.0.0.1:$SLUICE_OBS_ADMIN_PORT/metrics" \
                | awk '/^sluice_access_log_dropped_total/ { print $2 }')
            echo "  \"with\" run of $LOG_REQS requests; \`sluice_access_log_dropped_total\` at the end: ${dropped:-?}"
            r=$(paired_ratio observe-cost nginx-log/identity nginx-bare/identity 4)
            cost=$(awk -v r="$r" 'BEGIN { printf "%.1f", (1 - r) * 100 }')
            echo "- for scale, nginx with the same fields as a JSON access log (\`buffer=64k\`, to a file) ÷ without, median of the rounds' ratios:" \
                "**${r}×** (per round: $(round_ratios observe-cost nginx-log/identity nginx-bare/identity 4)), a cost of ${cost}%"
            ;;
    esac
done
rounds_details
