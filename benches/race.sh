#!/usr/bin/env bash
# The race: sluice against the floor (hyper alone, benches/floor.rs), HAProxy,
# nginx, Varnish and pingap (built on Pingora) when it is installed, ONE worker each, in front of the same two-member origin
# pool, in the same run, with interleaved rounds, medians and ratios.
#
#   bash benches/race.sh                                  # defaults below
#   DURATION=2s REPEATS=1 IDLE_CONNS=2000 bash benches/race.sh   # a quick smoke run
#   SCENARIOS="hit miss" bash benches/race.sh             # a subset
#   SLUICE_BIN=/tmp/old/sluice SLUICE_BIN_B=target/release/sluice bash benches/race.sh   # A/B
#
# Scenarios (wrk -t1 -c64 unless said; every target of a scenario runs the
# same command, once per round, the rounds interleaving the targets):
#   hit        cache hit of a 1 KiB `Cache-Control: public, max-age=600` body:
#              floor (the constant, no proxying), sluice (cache = true),
#              HAProxy (cache section), nginx (proxy_cache), Varnish (malloc)
#   miss       the same 1 KiB body with `no-store`, proxied to the 2-member
#              pool (round robin): sluice, HAProxy, nginx, Varnish (pass),
#              and the origin directly, for scale
#   hit-100k   cache hit of a 100 KiB body: sluice, HAProxy, nginx, Varnish
#   hit-gzip   cache hit of a 20 KiB text/html page with `Accept-Encoding:
#              gzip`: sluice (compress = true; stores a gzip copy), HAProxy
#              (compression after its cache: compresses every hit), nginx
#              (gzip on: compresses every hit), Varnish (beresp.do_gzip:
#              stores gzip)
#   tls-h2     the 1 KiB hit over TLS 1.3 + HTTP/2, `h2load -c16 -m10`:
#              sluice, HAProxy, nginx (Varnish has no TLS)
#   p99        the 1 KiB hit at 16, 64 and 256 connections (P99_CONNS), wrk
#              --latency: p99 latency (and req/s) of every peer, floor included
#   p99-miss   the same for the proxied miss (miss's peers)
#   idle       IDLE_CONNS idle HTTP/1.1 keep-alive connections to each peer,
#              one request each: (VmRSS of the peer's processes while they
#              are open - VmRSS before) / IDLE_CONNS, in KiB per connection.
#              Each peer is restarted first, so memory freed by earlier
#              scenarios cannot hide the cost.
#   idle-h2    the same over TLS + HTTP/2 (ALPN h2, one stream each): sluice,
#              HAProxy, nginx
#
# Fairness: one worker each (sluice `[server] workers = 1`, nginx
# `worker_processes 1`, HAProxy `nbthread 1`; Varnish serves each connection
# on a thread of its own, so it gets one thread pool, `thread_pools=1`, with
# VARNISH_THREADS threads); with PIN=1 (the default on 2+ CPUs) every peer runs
# on the first half of the CPUs and wrk, h2load, the idle client and the
# origin on the other half, so a peer that starts extra threads (Varnish
# does) still gets one half of the machine. Keep-alive to the client and to
# the origin (idle pools of up to 64 connections), no access log, the same
# request header work as benches/load.sh (X-Forwarded-For/-Proto/-Host, Via),
# gzip level 1 where there is a level (HAProxy's libslz has none), caches in
# memory (nginx: on disk, i.e. the page cache), TLS: the same ECDSA P-256
# self-signed certificate, each peer's default TLS 1.3 suites.
#
# The origin is one nginx instance (ORIGIN_WORKERS workers, static files from
# the temp dir) listening on two ports: the 2-member pool.
#
# Environment (defaults in brackets):
#   DURATION [5s]          wrk/h2load duration per measurement
#   REPEATS [3]            rounds
#   WARMUP [1s]            one unmeasured run per target before a scenario's rounds ("0" skips)
#   WRK_CONNS [64]         wrk -c (wrk -t is WRK_THREADS [1])
#   P99_CONNS [16 64 256]  connection counts of the p99 scenario
#   H2_CONNS [16], H2_STREAMS [10]   h2load -c, -m (tls-h2)
#   IDLE_CONNS [10000]     connections held open per peer (idle, idle-h2)
#   IDLE_SETTLE [2]        seconds between the last connection's answer and the RSS reading
#   SCENARIOS [hit miss hit-100k hit-gzip tls-h2 p99 p99-miss idle idle-h2]
#   PIN [auto]             1: peers on the first half of the CPUs, clients and origin on
#                          the rest (taskset); 0: no pinning; auto: 1 with taskset and 2+ CPUs
#   VARNISH_THREADS [300]  Varnish thread_pool_min (max is 5x); >= the largest P99_CONNS
#   ORIGIN_WORKERS [1]     worker_processes of the origin nginx
#   PORT_BASE [19200]      origin +1 and +2; floor +80; plain: sluice +81, sluice-b +82,
#                          HAProxy +83, nginx +84, Varnish +85; TLS: sluice +91,
#                          sluice-b +92, HAProxy +93, nginx +94 (all 127.0.0.1)
#   SLUICE_BIN [<target dir>/release/sluice]   the sluice under test
#   SLUICE_BIN_B [unset]   a second sluice build, run as the extra peer "sluice-b" in the same rounds
#   ONLY [unset]           peers to run, e.g. "sluice" or "sluice sluice-b" (default: every peer)
#   FLOOR_BIN [<target dir>/release/examples/floor]
#   PINGAP_BIN [pingap on PATH]   pingap, a proxy built on Cloudflare's Pingora
#                          (`cargo install pingap@0.13.1 --locked`; see docs/benchmarks-race.md);
#                          a peer of hit, miss, hit-100k, tls-h2, p99, p99-miss, idle and idle-h2
#                          when there is one (plain +86, TLS +96)
#   SKIP_INSTALL [0]       1: never call apt-get
#   SKIP_BUILD [0]         1: build nothing (the binaries must exist)
#   KEEP_TMP [0]           1: keep the temp dir (configs, logs, raw wrk/h2load output)
# The target dir is CARGO_TARGET_DIR when set, else target/.

set -euo pipefail

DURATION=${DURATION:-5s}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1s}
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-64}
P99_CONNS=${P99_CONNS:-16 64 256}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SETTLE=${IDLE_SETTLE:-2}
SCENARIOS=${SCENARIOS:-hit miss hit-100k hit-gzip tls-h2 p99 p99-miss idle idle-h2}
PIN=${PIN:-auto}
VARNISH_THREADS=${VARNISH_THREADS:-300}
ORIGIN_WORKERS=${ORIGIN_WORKERS:-1}
PORT_BASE=${PORT_BASE:-19200}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN_B=${SLUICE_BIN_B:-}
ONLY=${ONLY:-}
PINGAP_BIN=${PINGAP_BIN:-$(command -v pingap || true)}

ORIGIN_A=$((PORT_BASE + 1))
ORIGIN_B=$((PORT_BASE + 2))
declare -A PORT=(
    [origin]=$ORIGIN_A [floor]=$((PORT_BASE + 80))
    [sluice]=$((PORT_BASE + 81)) [sluice-b]=$((PORT_BASE + 82)) [haproxy]=$((PORT_BASE + 83))
    [nginx]=$((PORT_BASE + 84)) [varnish]=$((PORT_BASE + 85)) [pingap]=$((PORT_BASE + 86))
)
declare -A TLS_PORT=(
    [sluice]=$((PORT_BASE + 91)) [sluice-b]=$((PORT_BASE + 92)) [haproxy]=$((PORT_BASE + 93))
    [nginx]=$((PORT_BASE + 94)) [pingap]=$((PORT_BASE + 96))
)

# Binary paths given relative to where the script was started (lib.sh
# changes to the repo root).
abs_path() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -z "${SLUICE_BIN:-}" ] || SLUICE_BIN=$(abs_path "$SLUICE_BIN")
[ -z "$SLUICE_BIN_B" ] || SLUICE_BIN_B=$(abs_path "$SLUICE_BIN_B")
[ -z "${FLOOR_BIN:-}" ] || FLOOR_BIN=$(abs_path "$FLOOR_BIN")
[ -z "$PINGAP_BIN" ] || PINGAP_BIN=$(abs_path "$PINGAP_BIN")

# log, die, install_missing, split_cpus, the cleanup on exit, poll_http,
# start_bg, run_nginx, run_haproxy, run_varnishd, the nginx and HAProxy config
# pieces, is_hit, wrk_run, parse_wrk, median, ...; changes to the repo root.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for scen in $SCENARIOS; do
    case $scen in
        hit | miss | hit-100k | hit-gzip | tls-h2 | p99 | p99-miss | idle | idle-h2) ;;
        *) die "unknown scenario $scen (hit | miss | hit-100k | hit-gzip | tls-h2 | p99 | p99-miss | idle | idle-h2)" ;;
    esac
done
has_scen() { [[ " $SCENARIOS " == *" $1 "* ]]; }
if has_scen idle || has_scen idle-h2; then
    need=$((IDLE_CONNS + 512))
    [ "$(ulimit -n)" -ge "$need" ] \
        || die "IDLE_CONNS=$IDLE_CONNS needs an open-files limit of at least $need (ulimit -Hn is $(ulimit -Hn))"
fi
for c in $P99_CONNS; do
    [ "$c" -le "$VARNISH_THREADS" ] || die "P99_CONNS has $c > VARNISH_THREADS=$VARNISH_THREADS"
done

# ---------------------------------------------------------------- pinning ---
# PIN resolved; PIN_SERVER / PIN_CLIENT: taskset on SERVER_CPUS / CLIENT_CPUS.
split_cpus PIN
WRK_PREFIX=("${PIN_CLIENT[@]}")

# ---------------------------------------------------------------- install ---
install_missing --nginx-light "nginx haproxy varnish" nginx haproxy varnishd:varnish wrk \
    h2load:nghttp2-client curl openssl python3 gzip
command -v cc >/dev/null || die "varnishd needs a C compiler (cc) to compile VCL; install gcc"

# ------------------------------------------------------------------ build ---
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [ "$SKIP_BUILD" != 1 ]; then
    if [ -n "${SLUICE_BIN:-}" ]; then
        log "cargo build --release --example floor"
        cargo build --release --example floor >&2
    else
        log "cargo build --release --bin sluice --example floor"
        cargo build --release --bin sluice --example floor >&2
    fi
fi
SLUICE_BIN=${SLUICE_BIN:-$TARGET_DIR/release/sluice}
FLOOR_BIN=${FLOOR_BIN:-$TARGET_DIR/release/examples/floor}
[ -x "$SLUICE_BIN" ] || die "no $SLUICE_BIN"
# wanted PEER: whether ONLY (when set) names PEER; pingap only when installed.
wanted() {
    [ "$1" != pingap ] || [ -n "$PINGAP_BIN" ] || return 1
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]
}
[ -z "$PINGAP_BIN" ] || [ -x "$PINGAP_BIN" ] || die "no $PINGAP_BIN (PINGAP_BIN)"
wanted floor && { [ -x "$FLOOR_BIN" ] || die "no $FLOOR_BIN"; }
[ -z "$SLUICE_BIN_B" ] || [ -x "$SLUICE_BIN_B" ] || die "no $SLUICE_BIN_B (SLUICE_BIN_B)"
SLUICES=(sluice)
[ -z "$SLUICE_BIN_B" ] || SLUICES+=(sluice-b)

# ---------------------------------------------------------------- content ---
make_tmp sluice-race
mkdir -p "$TMP/www/miss" "$TMP/www/gz" "$TMP/tls"
head -c 1024 /dev/zero | tr '\0' 'x' >"$TMP/www/1k" # the floor's body too
cp "$TMP/www/1k" "$TMP/www/miss/1k"
head -c 102400 /dev/zero | tr '\0' 'b' >"$TMP/www/100k"
echo ok >"$TMP/www/index.html"
# A ~20 KiB HTML page whose rows vary, so that it compresses like markup
# rather than like one repeated line.
python3 - "$TMP/www/gz/page20k.html" <<'EOF'
import random, sys
rng = random.Random(17)
words = "alder birch cedar dune ember fjord grove heath inlet juniper kelp loam marsh".split()
rows = ["<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Stock</title></head>\n<body><table>\n"]
size, n = len(rows[0]), 0
while size < 20 * 1024 - 300:
    n += 1
    row = '<tr class="%s"><td>%d</td><td><a href="/p/%d">%s %s</a></td><td>%d.%02d</td></tr>\n' % (
        "odd" if n % 2 else "even", n, rng.randrange(99999), rng.choice(words), rng.choice(words),
        rng.randrange(900), rng.randrange(100))
    rows.append(row)
    size += len(row)
rows.append("</table></body></html>\n")
open(sys.argv[1], "w").write("".join(rows))
EOF
GZ_PAGE=/gz/page20k.html

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" 2>"$TMP/tls/openssl.log" \
    || { cat "$TMP/tls/openssl.log" >&2; die "openssl could not make a certificate"; }
cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/combined.pem"
chmod 644 "$TMP/tls/"*.pem

# ---------------------------------------------------------------- servers ---
ALL_PORTS=("$ORIGIN_B")
for t in "${!PORT[@]}"; do ALL_PORTS+=("${PORT[$t]}"); done
for t in "${!TLS_PORT[@]}"; do ALL_PORTS+=("${TLS_PORT[$t]}"); done
ports_free "${ALL_PORTS[@]}"
MAXCONN=$((IDLE_CONNS + 1024))
[ "$MAXCONN" -ge 10000 ] || MAXCONN=10000

# --- The origin: static files on two ports, pinned with the clients.
write_nginx_conf "$TMP/origin" "$ORIGIN_WORKERS" 4096 <<EOF
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    default_type text/plain;
    types { text/html html; }
    server {
        listen 127.0.0.1:$ORIGIN_A;
        listen 127.0.0.1:$ORIGIN_B;
        root $TMP/www;
        location / { add_header Cache-Control "public, max-age=600"; add_header X-Origin \$server_port; }
        location /miss/ { add_header Cache-Control "no-store"; add_header X-Origin \$server_port; }
    }
EOF

start_origin_nginx() {
    run_nginx origin "${PIN_CLIENT[@]}"
    wait_ready origin "$ORIGIN_A" "${PID_OF[origin]}" "$TMP/origin/error.log"
    wait_ready origin-b "$ORIGIN_B" "${PID_OF[origin]}" "$TMP/origin/error.log"
}

# --- sluice (and sluice-b: the same config on its own ports).
sluice_config() {
    local name=$1
    cat <<EOF
[server]
workers = 1
drain_timeout = "1s"

[[listener]]
name = "plain"
listen = "127.0.0.1:${PORT[$name]}"

[[listener]]
name = "tls"
listen = "127.0.0.1:${TLS_PORT[$name]}"
[listener.tls]
certs = [ { cert = "$TMP/tls/cert.pem", key = "$TMP/tls/key.pem" } ]

# The idle scenarios hold IDLE_CONNS connections from one client address.
[limits]
max_connections = $MAXCONN
max_connections_per_client = 0
keepalive_timeout = "90s"

[cache]
max_size = "256MiB"

[compression]
algorithms = ["gzip"]
level = "fast"
min_size = 1024

[[route]]
name = "miss"
path_prefix = "/miss/"
pool = "origin"

[[route]]
name = "gz"
path_prefix = "/gz/"
pool = "origin"
cache = true
compress = true

[[route]]
name = "all"
path_prefix = "/"
pool = "origin"
cache = true

[pool.origin]
policy = "round_robin"
servers = [ { addr = "127.0.0.1:$ORIGIN_A" }, { addr = "127.0.0.1:$ORIGIN_B" } ]
max_idle_per_server = 64
EOF
}
start_sluice() {
    local name=$1 bin=$SLUICE_BIN
    [ "$name" = sluice ] || bin=$SLUICE_BIN_B
    sluice_config "$name" >"$TMP/$name.toml"
    "$bin" --check --config "$TMP/$name.toml" >"$TMP/$name.check" 2>&1 \
        || { cat "$TMP/$name.check" >&2; die "$name config invalid: $TMP/$name.toml"; }
    start_bg "$name" "$TMP/$name.log" "${PIN_SERVER[@]}" env RUST_LOG=warn "$bin" --config "$TMP/$name.toml"
    wait_ready "$name" "${PORT[$name]}" "${PID_OF[$name]}" "$TMP/$name.log"
}

start_floor() {
    start_bg floor "$TMP/floor.log" "${PIN_SERVER[@]}" "$FLOOR_BIN" "127.0.0.1:${PORT[floor]}"
    wait_ready floor "${PORT[floor]}" "${PID_OF[floor]}" "$TMP/floor.log"
}

# --- nginx: proxy_cache on disk (its only store), gzip level 1 on every hit.
write_nginx_conf "$TMP/nginx" 1 "$MAXCONN" "worker_rlimit_nofile $((MAXCONN * 2));" <<EOF
    sendfile on;
    tcp_nopush on;
$(nginx_cache_gzip "$TMP/nginx")

$(nginx_upstream "$ORIGIN_A" "$ORIGIN_B")

    server {
        listen 127.0.0.1:${PORT[nginx]};
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        # nginx 1.22 leaves TLS 1.3 out of its default protocols.
        ssl_protocols TLSv1.2 TLSv1.3;

$(nginx_proxy_headers "        ")

        location /miss/ {
            proxy_pass http://origin;
            add_header Via "1.1 nginx" always;
        }
        location / {
            proxy_pass http://origin;
            proxy_cache bench;
            proxy_cache_valid 200 600s;
            proxy_cache_lock on;
            add_header Via "1.1 nginx" always;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
EOF
start_nginx() {
    run_nginx nginx "${PIN_SERVER[@]}"
    wait_ready nginx "${PORT[nginx]}" "${PID_OF[nginx]}" "$TMP/nginx/error.log"
}

# --- HAProxy: its cache (sizes set so that 100 KiB objects fit), then
# compression. HAProxy refuses the compression filter before the cache
# filter, so the cache keeps the identity body and every gzip hit is
# compressed again (libslz), as nginx does.
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    # HAProxy asks for two descriptors per maxconn (client and server side);
    # the idle scenarios need one per client connection, so a hard limit
    # below 2 x maxconn is enough: warn, do not refuse to start.
    no strict-limits
    tune.ssl.default-dh-param 2048

$(haproxy_defaults 90s)

cache bench
    total-max-size 256
    max-object-size 1048576
    max-age 600
    process-vary on

frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TMP/tls/combined.pem alpn h2,http/1.1
    maxconn $MAXCONN
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 haproxy"
    filter cache bench
    filter compression
    compression algo gzip
    compression type text/html text/plain text/css text/javascript application/json application/javascript application/xml image/svg+xml
    http-request cache-use bench if !{ path_beg /miss/ }
    http-response cache-store bench
    http-after-response add-header Via "1.1 haproxy"
    http-after-response set-header X-Cache-Hit %[res.cache_hit]
    default_backend origin

backend origin
    balance roundrobin
    server o1 127.0.0.1:$ORIGIN_A
    server o2 127.0.0.1:$ORIGIN_B
EOF
start_haproxy() {
    run_haproxy "${PIN_SERVER[@]}"
    wait_ready haproxy "${PORT[haproxy]}" "${PID_OF[haproxy]}" "$TMP/haproxy.log"
}

# --- Varnish: malloc storage, one thread pool; /miss/ is passed; the 20 KiB
# page is stored gzipped (do_gzip) and sent as is to gzip clients.
cat >"$TMP/varnish.vcl" <<EOF
vcl 4.1;
import directors;

backend o1 { .host = "127.0.0.1"; .port = "$ORIGIN_A"; }
backend o2 { .host = "127.0.0.1"; .port = "$ORIGIN_B"; }

sub vcl_init {
    new pool = directors.round_robin();
    pool.add_backend(o1);
    pool.add_backend(o2);
}
sub vcl_recv {
    set req.backend_hint = pool.backend();
    if (req.url ~ "^/miss/") {
        return (pass);
    }
}
sub vcl_backend_response {
    if (bereq.url ~ "^/gz/") {
        set beresp.do_gzip = true;
    }
}
EOF
start_varnish() {
    run_varnishd varnish "${PORT[varnish]}" "${PIN_SERVER[@]}" -- -p gzip_level=1 -p timeout_idle=90
    wait_ready varnish "${PORT[varnish]}" "${PID_OF[varnish]}" "$TMP/varnish.log"
}

# --- pingap (Pingora): its memory cache plugin on every path but /miss/,
# one thread per server (plain and TLS, each serving its own scenarios),
# no work stealing, upstream keep-alive, the usual forwarding fields and Via.
if [ -n "$PINGAP_BIN" ]; then
    mkdir -p "$TMP/pingap"
    cat >"$TMP/pingap/pingap.toml" <<EOF
[basic]
threads = 1
work_stealing = false
log_level = "error"
pid_file = "$TMP/pingap/pingap.pid"
upgrade_sock = "$TMP/pingap/upgrade.sock"
cache_max_size = "256MB"
upstream_keepalive_pool_size = 64

[upstreams.origin]
addrs = ["127.0.0.1:$ORIGIN_A", "127.0.0.1:$ORIGIN_B"]
algo = "round_robin"
idle_timeout = "90s"

[plugins.benchCache]
category = "cache"

[locations.miss]
upstream = "origin"
path = "/miss/"
enable_reverse_proxy_headers = true
proxy_add_headers = ["Via:1.1 pingap"]

[locations.all]
upstream = "origin"
path = "/"
enable_reverse_proxy_headers = true
proxy_add_headers = ["Via:1.1 pingap"]
plugins = ["benchCache"]

[certificates.bench]
tls_cert = "$TMP/tls/cert.pem"
tls_key = "$TMP/tls/key.pem"
is_default = true

[servers.plain]
addr = "127.0.0.1:${PORT[pingap]}"
locations = ["miss", "all"]

[servers.tls]
addr = "127.0.0.1:${TLS_PORT[pingap]}"
locations = ["miss", "all"]
global_certificates = true
enabled_h2 = true
EOF
fi
start_pingap() {
    start_bg pingap "$TMP/pingap.log" "${PIN_SERVER[@]}" "$PINGAP_BIN" -c "$TMP/pingap/pingap.toml"
    wait_ready pingap "${PORT[pingap]}" "${PID_OF[pingap]}" "$TMP/pingap.log"
}

# start_peer NAME / stop_peer NAME
start_peer() {
    case $1 in
        floor) start_floor ;; sluice | sluice-b) start_sluice "$1" ;; haproxy) start_haproxy ;;
        nginx) start_nginx ;; varnish) start_varnish ;; origin) start_origin_nginx ;;
        pingap) start_pingap ;;
    esac
}
stop_peer() {
    stop_pids "${PID_OF[$1]}"
    forget_pid "${PID_OF[$1]}"
    unset "PID_OF[$1]"
}

start_origin_nginx
for p in floor "${SLUICES[@]}" haproxy nginx varnish pingap; do wanted "$p" && start_peer "$p"; done

# ---------------------------------------------------------------- targets ---
targets_of() {
    local t
    for t in $(all_targets_of "$1"); do wanted "$t" && printf '%s ' "$t"; done
    return 0
}
all_targets_of() {
    case $1 in
        p99-miss*) echo "${SLUICES[*]} haproxy nginx varnish pingap" ;;
        hit | p99* | idle) echo "floor ${SLUICES[*]} haproxy nginx varnish pingap" ;;
        miss) echo "origin ${SLUICES[*]} haproxy nginx varnish pingap" ;;
        hit-100k) echo "${SLUICES[*]} haproxy nginx varnish pingap" ;;
        hit-gzip) echo "${SLUICES[*]} haproxy nginx varnish" ;;
        tls-h2 | idle-h2) echo "${SLUICES[*]} haproxy nginx pingap" ;;
    esac
}
path_of() {
    case $1 in
        miss | p99-miss*) echo /miss/1k ;; hit-100k) echo /100k ;; hit-gzip) echo "$GZ_PAGE" ;; *) echo /1k ;;
    esac
}
label() {
    case $1 in
        floor) echo "floor (hyper alone)" ;; origin) echo "origin direct" ;; sluice) echo sluice ;;
        sluice-b) echo sluice-b ;; haproxy) echo HAProxy ;; nginx) echo nginx ;; varnish) echo Varnish ;;
        pingap) echo "pingap (Pingora)" ;;
    esac
}

# ------------------------------------------------------------ sanity checks ---
# check SCENARIO TARGET: three requests; the last must be 200 with the
# expected body (decoded), the right Content-Encoding and protocol, and a
# cache hit (miss: not a hit, and both origin members seen).
check() {
    local scen=$1 t=$2 path url ref enc="" args=() i code size ce origins=""
    path=$(path_of "$scen")
    url="http://127.0.0.1:${PORT[$t]}$path"
    ref=$TMP/www$path
    case $scen in
        tls-h2 | idle-h2) url="https://127.0.0.1:${TLS_PORT[$t]}$path"; args=(-k --http2) ;;
        hit-gzip) enc=gzip; args=(--compressed -H "Accept-Encoding: gzip") ;;
    esac
    for i in 1 2 3 4; do
        read -r code size < <(curl -sS --max-time 5 "${args[@]}" -D "$TMP/check.headers" -o "$TMP/check.body" \
            -w '%{http_code} %{size_download}\n' "$url") || die "$t: request $i for scenario $scen failed"
        origins+=" $(awk -F': *' 'tolower($1) == "x-origin" { gsub(/\r/, "", $2); print $2 }' "$TMP/check.headers")"
    done
    [ "$code" = 200 ] || die "$scen $t: status $code (headers: $(tr -d '\r' <"$TMP/check.headers"))"
    cmp -s "$TMP/check.body" "$ref" || die "$scen $t: body differs from $ref"
    ce=$(awk -F': *' 'tolower($1) == "content-encoding" { gsub(/\r/, "", $2); print tolower($2) }' "$TMP/check.headers")
    [ "$ce" = "$enc" ] || die "$scen $t: Content-Encoding '${ce:-none}', wanted '${enc:-none}'"
    case $scen in
        tls-h2 | idle-h2)
            head -1 "$TMP/check.headers" | grep -q '^HTTP/2 ' || die "$scen $t: not HTTP/2: $(head -1 "$TMP/check.headers")"
            ;;
    esac
    if [ "$scen" = miss ]; then
        is_hit "$t" "$TMP/check.headers" && die "$scen $t: answered from a cache"
        [ "$t" = origin ] || { [[ $origins == *$ORIGIN_A* ]] && [[ $origins == *$ORIGIN_B* ]]; } \
            || die "$scen $t: not balanced over both origin members (X-Origin:$origins)"
    else
        is_hit "$t" "$TMP/check.headers" || die "$scen $t: not a cache hit: $(tr -d '\r' <"$TMP/check.headers")"
    fi
    printf '%s\t%s\t%s\n' "$scen" "$t" "$size" >>"$TMP/bodies.tsv"
}
for scen in $SCENARIOS; do
    case $scen in p99 | p99-miss | idle) ;; *) for t in $(targets_of "$scen"); do check "$scen" "$t"; done ;; esac
done
# p99 and idle use the hit's path, p99-miss the miss's; each is checked once
# when its scenario is not in the run.
if ! has_scen hit && { has_scen p99 || has_scen idle; }; then
    for t in $(targets_of hit); do check hit "$t"; done
fi
if ! has_scen miss && has_scen p99-miss; then
    for t in $(targets_of p99-miss); do check miss "$t"; done
fi
log "sanity checks passed"

# ---------------------------------------------------------------- measure ---
# parse_h2load FILE -> "rps 0 errors non2xx requests"
parse_h2load() {
    awk '
        /^finished in/  { rps = $4 }
        /^requests:/    { done = $6; err = $10 + $12 + $14 }
        /^status codes:/ { ok = $3 }
        END {
            if (rps == "" || done == "") exit 1
            printf "%s 0 %d %d %d\n", rps, err, done - ok, done
        }' "$1"
}
h2load_run() {
    local out=$1 name=$2 duration=$3 url=$4
    # One TLS 1.3 suite for all: left to choose, OpenSSL servers pick
    # AES-256-GCM and rustls AES-128-GCM.
    "${PIN_CLIENT[@]}" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$duration" \
        --tls13-ciphers=TLS_AES_128_GCM_SHA256 "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$out" >&2; die "h2load against $name failed"; }
    WRK_PID=
}

# measure SCENARIO TARGET DURATION OUTFILE: one run (wrk or h2load).
measure() {
    local scen=$1 t=$2 path
    path=$(path_of "$scen")
    case $scen in
        tls-h2) h2load_run "$4" "$t" "$3" "https://127.0.0.1:${TLS_PORT[$t]}$path" ;;
        hit-gzip) wrk_run "$4" "$t" "$3" "http://127.0.0.1:${PORT[$t]}$path" -H "Accept-Encoding: gzip" ;;
        p99-miss-*) WRK_CONNS=${scen#p99-miss-} wrk_run "$4" "$t" "$3" "http://127.0.0.1:${PORT[$t]}$path" ;;
        p99-*) WRK_CONNS=${scen#p99-} wrk_run "$4" "$t" "$3" "http://127.0.0.1:${PORT[$t]}$path" ;;
        *) wrk_run "$4" "$t" "$3" "http://127.0.0.1:${PORT[$t]}$path" ;;
    esac
}

START=$(date +%s)
echo -e "scenario\ttarget\tround\trps\tp99_ms\terrors\tnon2xx\trequests\tcpu_us" >"$TMP/results.tsv"
CLK_TCK=$(getconf CLK_TCK)
LOAD_SCENARIOS=()
for scen in $SCENARIOS; do
    case $scen in
        p99) for c in $P99_CONNS; do LOAD_SCENARIOS+=("p99-$c"); done ;;
        p99-miss) for c in $P99_CONNS; do LOAD_SCENARIOS+=("p99-miss-$c"); done ;;
        idle | idle-h2) ;;
        *) LOAD_SCENARIOS+=("$scen") ;;
    esac
done
for scen in "${LOAD_SCENARIOS[@]}"; do
    if [ "$WARMUP" != 0 ]; then
        for t in $(targets_of "$scen"); do
            log "warm-up $scen $t ($WARMUP)"
            measure "$scen" "$t" "$WARMUP" "$TMP/warmup.$scen.$t.txt"
        done
    fi
    for round in $(seq "$REPEATS"); do
        for t in $(targets_of "$scen"); do
            out="$TMP/run.$scen.$t.$round.txt"
            cpu_before=$(tree_cpu_ticks "${PID_OF[$t]}")
            measure "$scen" "$t" "$DURATION" "$out"
            cpu_after=$(tree_cpu_ticks "${PID_OF[$t]}")
            if [ "$scen" = tls-h2 ]; then
                read -r rps p99 err non2xx reqs < <(parse_h2load "$out") || { cat "$out" >&2; die "cannot parse h2load output"; }
            else
                read -r rps p99 err non2xx reqs < <(parse_wrk "$out") || { cat "$out" >&2; die "cannot parse wrk output"; }
            fi
            # The peer's own CPU time per request answered, in microseconds.
            cpu_us=$(awk -v a="$cpu_before" -v b="$cpu_after" -v n="$reqs" -v hz="$CLK_TCK" \
                'BEGIN { if (n > 0) printf "%.2f", (b - a) / hz * 1e6 / n; else print 0 }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$t" "$round" "$rps" "$p99" "$err" "$non2xx" "$reqs" "$cpu_us" \
                >>"$TMP/results.tsv"
            log "$(printf 'round %d/%d %-9s %-9s %9.0f req/s  p99 %7.2f ms  errors %d  non-2xx %d  cpu %6.2f us/req' \
                "$round" "$REPEATS" "$scen" "$t" "$rps" "$p99" "$err" "$non2xx" "$cpu_us")"
        done
    done
done

# --- idle: the connection holder, asyncio, one task per connection.
cat >"$TMP/idle_conns.py" <<'EOF'
"""Open N keep-alive connections, one GET each, then hold them idle.

usage: idle_conns.py PORT N PATH h1|h2 STATUS_FILE HOLD_SECONDS

Writes "ready OK FAILED FIRST_ERROR" to STATUS_FILE once every connection
has its answer (or failed), then holds them until SIGTERM or HOLD_SECONDS,
then writes "done OK FAILED ALIVE" (ALIVE: not closed by the server).
h2 is HTTP/2 over TLS (ALPN h2), one stream per connection.
"""
import asyncio, os, resource, signal, ssl, struct, sys

PORT, N, PATH, MODE, STATUS, HOLD = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
OPENING = 200  # connections being opened at once

def status(text):
    with open(STATUS + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(STATUS + ".tmp", STATUS)

class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer, self.closed = reader, writer, False

async def h1():
    r, w = await asyncio.open_connection("127.0.0.1", int(PORT))
    w.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError("no content-length")
    await r.readexactly(length)
    c = Conn(r, w)
    asyncio.ensure_future(h1_keep(c))
    return c

async def h1_keep(c):
    try:
        await c.reader.read(1)  # b"" at EOF; nothing else should come
    except Exception:
        pass
    c.closed = True

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def literal(index, value):
    """An HPACK literal field without indexing, name from the static table."""
    v = value.encode()
    return bytes([index, len(v)]) + v

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
CTX.set_alpn_protocols(["h2"])

async def read_frame(r):
    head = await r.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, await r.readexactly(length)

def answer_control(w, kind, flags, payload):
    if kind == 4 and not flags & 1:  # SETTINGS: acknowledge
        w.write(frame(4, 1, 0))
    elif kind == 6 and not flags & 1:  # PING: answer
        w.write(frame(6, 1, 0, payload))
    elif kind == 7:  # GOAWAY
        raise ConnectionError("GOAWAY")

async def h2():
    r, w = await asyncio.open_connection("127.0.0.1", int(PORT), ssl=CTX, server_hostname="localhost")
    if w.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
        raise RuntimeError("ALPN did not select h2")
    # :method GET (static 2), :scheme https (static 7), :path, :authority.
    block = b"\x82\x87" + literal(4, PATH) + literal(1, "localhost")
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    status_ok = False
    while True:
        kind, flags, stream, payload = await read_frame(r)
        answer_control(w, kind, flags, payload)
        if stream == 1 and kind == 1:
            status_ok = payload[:1] == b"\x88"  # :status 200, static 8
        if stream == 1 and kind in (0, 1) and flags & 1:
            break
    if not status_ok:
        raise RuntimeError("status not 200")
    c = Conn(r, w)
    asyncio.ensure_future(h2_keep(c))
    return c

async def h2_keep(c):
    try:
        while True:
            kind, flags, _, payload = await read_frame(c.reader)
            answer_control(c.writer, kind, flags, payload)
    except Exception:
        pass
    c.closed = True

async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opener = h2 if MODE == "h2" else h1
    gate = asyncio.Semaphore(OPENING)
    conns, errors = [], []

    async def one():
        async with gate:
            try:
                conns.append(await asyncio.wait_for(opener(), 30))
            except Exception as e:
                errors.append(repr(e))

    await asyncio.gather(*(one() for _ in range(N)))
    status("ready %d %d %s" % (len(conns), len(errors), (errors[0] if errors else "-").replace(" ", "_")))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), HOLD)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0)
    status("done %d %d %d" % (len(conns), len(errors), sum(not c.closed for c in conns)))
    for c in conns:
        c.writer.close()

asyncio.run(main())
EOF

# tree_rss_kib ROOT: the VmRSS sum of ROOT and all its descendants, in KiB.
tree_rss_kib() {
    # shellcheck disable=SC2046 # a word list of PIDs
    for p in $(tree_pids "$1"); do cat "/proc/$p/status" 2>/dev/null || true; done | awk '/^VmRSS:/ { s += $2 } END { print s + 0 }'
}

# idle_run SCENARIO TARGET: restart TARGET, then hold IDLE_CONNS connections.
idle_run() {
    local scen=$1 t=$2 port mode=h1 cpid before after state ok failed first alive
    port=${PORT[$t]}
    [ "$scen" = idle-h2 ] && { port=${TLS_PORT[$t]}; mode=h2; }
    stop_peer "$t"
    start_peer "$t"
    # A few requests first, so that what one-off work they cause is in "before".
    for _ in 1 2 3; do
        if [ "$mode" = h2 ]; then curl -sk --http2 -o /dev/null "https://127.0.0.1:$port/1k" || true
        else curl -s -o /dev/null "http://127.0.0.1:$port/1k" || true; fi
    done
    sleep 1
    before=$(tree_rss_kib "${PID_OF[$t]}")
    rm -f "$TMP/idle.status"
    "${PIN_CLIENT[@]}" python3 "$TMP/idle_conns.py" "$port" "$IDLE_CONNS" /1k "$mode" "$TMP/idle.status" 600 \
        >"$TMP/idle.$scen.$t.log" 2>&1 &
    cpid=$!
    PIDS+=("$cpid")
    for _ in $(seq 3000); do
        [ -s "$TMP/idle.status" ] && break
        kill -0 "$cpid" 2>/dev/null || { cat "$TMP/idle.$scen.$t.log" >&2; die "idle client for $t exited early"; }
        sleep 0.1
    done
    read -r state ok failed first <"$TMP/idle.status" || die "$scen $t: no status from the idle client"
    [ "$state" = ready ] || die "$scen $t: idle client did not get ready in 300 s"
    sleep "$IDLE_SETTLE"
    after=$(tree_rss_kib "${PID_OF[$t]}")
    kill -TERM "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    forget_pid "$cpid"
    read -r state ok failed alive <"$TMP/idle.status" || true
    [ "$state" = "done" ] || alive="?"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$t" "$ok" "$failed" "${alive:-?}" "$before" "$after" \
        "$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN { printf "%.2f", n ? (a - b) / n : 0 }')" >>"$TMP/idle.tsv"
    log "$(printf '%-7s %-9s %6d conns (%d failed%s, %s alive at the end)  RSS %7.1f -> %7.1f MiB  %6.2f KiB/conn' \
        "$scen" "$t" "$ok" "$failed" "$([ "$failed" = 0 ] || echo ", first: $first")" "${alive:-?}" \
        "$(awk -v k="$before" 'BEGIN { print k / 1024 }')" "$(awk -v k="$after" 'BEGIN { print k / 1024 }')" \
        "$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN { printf "%.2f", n ? (a - b) / n : 0 }')")"
    sleep 1
}
echo -e "scenario\ttarget\tconns\tfailed\talive\trss_before_kib\trss_after_kib\tkib_per_conn" >"$TMP/idle.tsv"
for scen in idle idle-h2; do
    has_scen "$scen" || continue
    for t in $(targets_of "$scen"); do idle_run "$scen" "$t"; done
done
ELAPSED=$(($(date +%s) - START))

# ----------------------------------------------------------------- report ---
# results.tsv columns, for median and column_sum (lib.sh): 4=rps 5=p99
# 9=cpu_us.
in_scen() { [[ " $(targets_of "$1") " == *" $2 "* ]]; }
# cell SCENARIO TARGET COLUMN FORMAT: the median, or "–" for a target not in it.
cell() {
    # shellcheck disable=SC2059 # the format is the caller's
    if in_scen "$1" "$2"; then printf "$4" "$(median "$1" "$2" "$3")"; else printf '–'; fi
}
# rcell SCENARIO A B COLUMN: median(A) / median(B), or "–".
rcell() {
    # shellcheck disable=SC2059 # the format is the caller's
    if in_scen "$1" "$2" && in_scen "$1" "$3"; then
        printf '%s' "$(ratio "$(median "$1" "$2" "$4")" "$(median "$1" "$3" "$4")")"
    else printf '–'; fi
}
PEERS=(floor origin "${SLUICES[@]}" haproxy nginx varnish pingap)

# scenario_table COLUMN FORMAT OTHERS: a row per load scenario (the p99 runs
# have their own table): every peer's median of COLUMN in FORMAT, sluice's
# ratio to each peer of OTHERS (a word list), and sluice-b's to sluice.
scenario_table() {
    local col=$1 fmt=$2 others=$3 head="| scenario |" sep="|---|" p o scen row
    for p in "${PEERS[@]}"; do head+=" $(label "$p") |"; sep+="---:|"; done
    for o in $others; do head+=" sluice ÷ $(label "$o" | sed 's/ (.*//') |"; sep+="---:|"; done
    [ -z "$SLUICE_BIN_B" ] || { head+=" sluice-b ÷ sluice |"; sep+="---:|"; }
    echo "$head"
    echo "$sep"
    for scen in "${LOAD_SCENARIOS[@]}"; do
        [[ $scen == p99-* ]] && continue
        row="| \`$scen\` |"
        for p in "${PEERS[@]}"; do row+=" $(cell "$scen" "$p" "$col" "$fmt") |"; done
        for o in $others; do row+=" $(rcell "$scen" sluice "$o" "$col") |"; done
        [ -z "$SLUICE_BIN_B" ] || row+=" $(rcell "$scen" sluice-b sluice "$col") |"
        echo "$row"
    done
}

echo
echo "## The race: sluice vs the floor, HAProxy, nginx, Varnish and pingap, one worker each"
echo
machine_lines
echo "- sluice binary: \`$SLUICE_BIN\`${SLUICE_BIN_B:+; sluice-b: \`$SLUICE_BIN_B\`}"
echo "- HAProxy: $(version_of haproxy); nginx: $(version_of nginx); Varnish: $(version_of varnishd); pingap: $(if [ -n "$PINGAP_BIN" ]; then version_of pingap; else echo "not installed"; fi); wrk: $(version_of wrk);" \
    "h2load: $(h2load --version 2>/dev/null | awk '{ print $2; exit }')"
if [ "$PIN" = 1 ]; then
    echo "- pinned: every peer on CPU(s) $SERVER_CPUS; wrk, h2load, the idle client and the origin on CPU(s) $CLIENT_CPUS"
else
    echo "- not pinned (PIN=0): peers, clients and origin share every CPU"
fi
echo "- one worker each (sluice \`workers = 1\`, nginx \`worker_processes 1\`, HAProxy \`nbthread 1\`, pingap \`threads = 1\`, Varnish \`thread_pools=1\`"
echo "  with $VARNISH_THREADS threads); \`wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION\`; tls-h2: \`h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D $DURATION\`;"
echo "  REPEATS=$REPEATS interleaved rounds, warm-up $WARMUP; measuring took ${ELAPSED}s; origin: nginx ($ORIGIN_WORKERS worker) on two ports"

if [ "${#LOAD_SCENARIOS[@]}" -gt 0 ]; then
    echo
    echo "### Requests per second (medians)"
    echo
    scenario_table 4 %.0f "floor haproxy nginx varnish pingap"
    echo
    echo "Above 1 in a \"sluice ÷\" column: sluice serves more. The floor serves only the 1 KiB body over plain HTTP/1.1;"
    echo "\"origin direct\" (\`miss\` only) is wrk against one origin port, for scale. Bodies on the wire: $(awk -F'\t' '$2 == "sluice" { printf "%s%s %s B", sep, $1, $3; sep = ", " }' "$TMP/bodies.tsv")."
    if in_scen hit-gzip sluice && has_scen hit-gzip; then
        echo "\`hit-gzip\` bodies on the wire: $(awk -F'\t' '$1 == "hit-gzip" { printf "%s%s %s B", sep, $2, $3; sep = ", " }' "$TMP/bodies.tsv")"
        echo "(sluice keeps a copy made at gzip level 6 once; the others' level is 1, or libslz for HAProxy)."
    fi
    if has_scen tls-h2; then
        echo
        echo "\`tls-h2\` as negotiated (h2load): $(for t in $(targets_of tls-h2); do
            awk -v t="$t" '/^TLS Protocol:/ { p = $3 } /^Cipher:/ { c = $2 } /^Application protocol:/ { a = $3 }
                END { printf "%s %s %s %s; ", t, p, c, a }' "$TMP/run.tls-h2.$t.1.txt"; done)"
    fi
    echo
    echo "### CPU time per request (µs, medians)"
    echo
    echo "The peer's own processes (user + system time, every thread and child) over each run, divided by the"
    echo "requests answered: what a request costs the proxy, also where a run is bound by something else (\`miss\`"
    echo "by the origin's CPU when pinned). \"origin direct\" is the origin's own cost, for scale."
    echo
    scenario_table 9 %.2f "haproxy nginx varnish pingap"
    echo
    echo "Below 1 in a \"sluice ÷\" column: a request costs sluice less CPU."
    bad=""
    for scen in "${LOAD_SCENARIOS[@]}"; do
        # shellcheck disable=SC2046 # targets_of gives a word list
        e=$(run_errors "$scen" $(targets_of "$scen"))
        [ -z "$e" ] || bad+=" $scen:$e"
    done
    [ -z "$bad" ] || { echo; echo "**WARNING** errors during the runs:$bad"; }
fi

# p99_table PREFIX TITLE PEERS: the p99 (and req/s) of each peer of PEERS (a
# word list; sluice-b follows sluice) at each of P99_CONNS, the scenarios
# PREFIX$c, and sluice's ratio to each other peer.
p99_table() {
    local scen_prefix=$1 peers=() others=() head="| connections |" sep="|---:|" p c row
    for p in $3; do
        peers+=("$p")
        if [ "$p" = sluice ]; then [ -z "$SLUICE_BIN_B" ] || peers+=(sluice-b); else others+=("$p"); fi
    done
    echo
    echo "### p99 latency of $2 (ms, medians; req/s in brackets)"
    echo
    for p in "${peers[@]}"; do head+=" $(label "$p") |"; sep+="---:|"; done
    for p in "${others[@]}"; do head+=" sluice ÷ $(label "$p" | sed 's/ (.*//') |"; sep+="---:|"; done
    echo "$head"
    echo "$sep"
    for c in $P99_CONNS; do
        row="| $c |"
        for p in "${peers[@]}"; do
            row+=" $(cell "$scen_prefix$c" "$p" 5 '%.2f') ($(cell "$scen_prefix$c" "$p" 4 '%.0f')) |"
        done
        for p in "${others[@]}"; do row+=" $(rcell "$scen_prefix$c" sluice "$p" 5) |"; done
        echo "$row"
    done
    echo
    echo "Below 1 in a \"sluice ÷\" column: sluice's tail is shorter."
}
! has_scen p99 || p99_table p99- "the 1 KiB hit" "floor sluice haproxy nginx varnish pingap"
! has_scen p99-miss || p99_table p99-miss- "the proxied miss" "sluice haproxy nginx varnish pingap"

if has_scen idle || has_scen idle-h2; then
    echo
    echo "### Idle connections: memory per connection"
    echo
    echo "| scenario | peer | connections | still open at the end | RSS before | RSS held | KiB per connection |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 {
        printf "| `%s` | %s | %d%s | %s | %.1f MiB | %.1f MiB | **%.2f** |\n", $1, $2, $3,
            ($4 > 0 ? " (" $4 " failed)" : ""), $5, $6 / 1024, $7 / 1024, $8 }' "$TMP/idle.tsv" \
        | sed -e 's/| floor |/| floor (hyper alone) |/' -e 's/| haproxy |/| HAProxy |/' -e 's/| varnish |/| Varnish |/'
    echo
    echo "(VmRSS of the peer's processes while IDLE_CONNS=$IDLE_CONNS connections sit idle after one request each,"
    echo "minus before, ÷ connections; each peer restarted just before. idle-h2: TLS 1.3 + HTTP/2, one stream each.)"
fi
rounds_details
