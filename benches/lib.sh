# shellcheck shell=bash
# Helpers shared by the benchmark scripts in benches/ (load.sh, cache-load.sh,
# race.sh, cache-conformance.sh). Not run on its own: each script sources it,
# after `set -euo pipefail` and its environment defaults, with
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# On sourcing it puts /usr/sbin and /sbin on PATH (nginx, haproxy and varnishd
# live there), changes to the repo root (REPO), and sets the traps that stop
# the servers in PIDS on exit (see cleanup). The load benchmarks' report
# helpers (median, column_sum, ...) read the results table $TMP/results.tsv
# (a header line, then scenario, target, round, values...).

# The script that sourced this file, for die's messages.
SCRIPT_NAME=${BASH_SOURCE[1]##*/}

export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- install ---
# install_missing [--nginx-light] SERVICES COMMAND[:PACKAGE]...: install with
# apt-get (as root, else through sudo) the PACKAGE of every COMMAND not on PATH
# (PACKAGE defaults to COMMAND); with SKIP_INSTALL=1, or without apt-get, die
# naming them instead. --nginx-light: the nginx package is nginx-light where
# it exists (smaller; it has the proxy, proxy_cache and gzip these use), else
# nginx. SERVICES is a word list of the services to stop afterwards.
install_missing() {
    local light=0
    if [ "${1:-}" = --nginx-light ]; then light=1; shift; fi
    local services=() missing=() pkgs=() sudo=() want m
    read -ra services <<<"$1"
    shift
    for want in "$@"; do
        command -v "${want%%:*}" >/dev/null || missing+=("${want#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$SKIP_INSTALL" = 1 ] && die "missing: ${missing[*]} (and SKIP_INSTALL=1)"
    command -v apt-get >/dev/null || die "missing: ${missing[*]}; install them (no apt-get here)"
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    for m in "${missing[@]}"; do
        if [ "$m" = nginx ] && [ "$light" = 1 ] && apt-cache show nginx-light >/dev/null 2>&1; then
            pkgs+=(nginx-light)
        else
            pkgs+=("$m")
        fi
    done
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${pkgs[@]}" >&2
    # Debian starts the packaged services where systemd runs; they listen on
    # their usual ports (:80, :6081, ...) and use their own dirs, not ours, so
    # they do not interfere, but do not leave them running on our account.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl stop "${services[@]}" 2>/dev/null || true
    fi
}

# ---------------------------------------------------------------- pinning ---
# split_cpus KNOB: read the CPUs this process may run on (Cpus_allowed_list,
# "0-3,6") into ALLOWED_CPUS and resolve the variable named KNOB in place:
# auto becomes 1 when taskset exists and at least 2 CPUs are allowed, else 0.
# With KNOB=1: SERVER_CPUS, the first half of ALLOWED_CPUS, and CLIENT_CPUS,
# the rest (taskset lists), and PIN_SERVER and PIN_CLIENT, the taskset
# prefixes that run a command on them; else both prefixes are empty.
# shellcheck disable=SC2034 # the PIN_ arrays are for the scripts that source this
split_cpus() {
    local knob=$1 part c half
    ALLOWED_CPUS=()
    # shellcheck disable=SC2013 # one line, split into words on purpose
    for part in $(awk '/^Cpus_allowed_list:/ { gsub(/,/, " ", $2); print $2 }' /proc/self/status 2>/dev/null); do
        if [[ $part == *-* ]]; then
            for ((c = ${part%-*}; c <= ${part#*-}; c++)); do ALLOWED_CPUS+=("$c"); done
        else
            ALLOWED_CPUS+=("$part")
        fi
    done
    if [ "${!knob}" = auto ]; then
        printf -v "$knob" 0
        if command -v taskset >/dev/null && [ "${#ALLOWED_CPUS[@]}" -ge 2 ]; then printf -v "$knob" 1; fi
    fi
    PIN_SERVER=()
    PIN_CLIENT=()
    [ "${!knob}" = 1 ] || return 0
    command -v taskset >/dev/null || die "$knob=1 needs taskset (util-linux)"
    [ "${#ALLOWED_CPUS[@]}" -ge 2 ] || die "$knob=1 needs at least 2 CPUs"
    half=$((${#ALLOWED_CPUS[@]} / 2))
    SERVER_CPUS=$(IFS=,; echo "${ALLOWED_CPUS[*]:0:half}")
    CLIENT_CPUS=$(IFS=,; echo "${ALLOWED_CPUS[*]:half}")
    PIN_SERVER=(taskset -c "$SERVER_CPUS")
    PIN_CLIENT=(taskset -c "$CLIENT_CPUS")
}

# ------------------------------------------------------------------ build ---
# build_bins: cargo build --release of sluice and the demo example (unless
# SKIP_BUILD=1); SLUICE_BIN and DEMO_BIN are the binaries, which must exist.
build_bins() {
    local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
    if [ "$SKIP_BUILD" != 1 ]; then
        log "cargo build --release --bin sluice --example demo"
        cargo build --release --bin sluice --example demo >&2
    fi
    SLUICE_BIN=$target_dir/release/sluice
    DEMO_BIN=$target_dir/release/examples/demo
    [ -x "$SLUICE_BIN" ] || die "no $SLUICE_BIN"
    [ -x "$DEMO_BIN" ] || die "no $DEMO_BIN"
}

# ---------------------------------------------------------------- cleanup ---
# PIDS: the servers started in the background, stopped by cleanup. WRK_PID:
# the load generator while one runs. CLEANUP_DIR: the temp dir of make_tmp.
PIDS=()
WRK_PID=
# WRK_PREFIX: a command wrk_run runs wrk under (taskset -c ...), or nothing.
WRK_PREFIX=()
CLEANUP_DIR=

# make_tmp NAME: a fresh temp dir TMP (removed by cleanup unless KEEP_TMP=1),
# readable by all: nginx workers and the Varnish child drop to unprivileged
# users when run as root.
make_tmp() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$TMP"
    CLEANUP_DIR=$TMP
}

# stop_pids PID...: TERM them all, then give each a few seconds to stop
# before forcing it, and reap it.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# forget_pid PID: take PID out of PIDS (it has been stopped or reaped).
forget_pid() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# cleanup: stop wrk and every server in PIDS, remove the temp dir. Runs on
# exit; calling it earlier is fine (what it stopped it forgets).
cleanup() {
    [ -z "$WRK_PID" ] || kill -TERM "$WRK_PID" 2>/dev/null || true
    stop_pids "${PIDS[@]}"
    PIDS=()
    if [ -n "$CLEANUP_DIR" ]; then
        if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $CLEANUP_DIR"; else rm -rf "$CLEANUP_DIR"; fi
        CLEANUP_DIR=
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- servers ---
answers() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; }

# ports_free PORT...: die when anything answers HTTP on one of them already.
ports_free() {
    local port
    for port in "$@"; do
        answers "$port" && die "something already answers on 127.0.0.1:$port; set PORT_BASE"
    done
    return 0
}

# poll_http STATUS SECONDS NAME PORT PID LOGFILE: poll 127.0.0.1:PORT/ until it
# answers HTTP STATUS (empty: any status at all); when PID exits first, or
# after SECONDS, show LOGFILE and die.
poll_http() {
    local want=$1 secs=$2 name=$3 port=$4 pid=$5 logf=$6 code
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "$name exited during start-up (log above)"; }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null || true)
        if [ -n "$want" ]; then
            [ "$code" = "$want" ] && { log "$name ready on 127.0.0.1:$port"; return 0; }
        else
            [ -n "$code" ] && [ "$code" != 000 ] && { log "$name up on 127.0.0.1:$port"; return 0; }
        fi
        sleep 0.1
    done
    cat "$logf" >&2
    if [ -n "$want" ]; then
        die "$name not answering $want on 127.0.0.1:$port after ${secs}s (last status: ${code:-none})"
    fi
    die "$name not answering on 127.0.0.1:$port after ${secs}s"
}
# wait_ready NAME PORT PID LOGFILE: poll until the port answers HTTP 200.
wait_ready() { poll_http 200 30 "$@"; }
# wait_http NAME PORT PID LOGFILE: poll until the port answers HTTP at all.
wait_http() { poll_http "" 20 "$@"; }

# start_origin: the demo origin (DEMO_BIN) on 127.0.0.1:ORIGIN_PORT.
start_origin() {
    "$DEMO_BIN" --origin-only "127.0.0.1:$ORIGIN_PORT" >"$TMP/origin.log" 2>&1 &
    PIDS+=($!)
    wait_ready origin "$ORIGIN_PORT" $! "$TMP/origin.log"
}

# PID_OF: the PID of each server started by start_bg, by name.
declare -A PID_OF

# start_bg NAME LOGFILE COMMAND...: start COMMAND in the background, output to
# LOGFILE, and remember its PID in PIDS and PID_OF[NAME] (a prefix that execs
# the command, taskset or env, leaves the PID the server's).
# shellcheck disable=SC2034 # PID_OF is for the scripts that source this
start_bg() {
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    PIDS+=($!)
    PID_OF[$name]=$!
}

# run_nginx NAME [PREFIX...]: check, then start (under PREFIX: taskset ...)
# the nginx instance kept in $TMP/NAME (its nginx.conf, pid and error.log;
# -e: the start-up error log too goes there, not /var/log/nginx), output to
# $TMP/NAME.log. Does not wait: wait_ready on its port and error.log.
run_nginx() {
    local name=$1 dir=$TMP/$1
    shift
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -t -q >&2 \
        || die "$name config invalid: $dir/nginx.conf"
    start_bg "$name" "$TMP/$name.log" "$@" \
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
}

# run_haproxy [PREFIX...]: check, then start (under PREFIX) HAProxy as
# "haproxy" with $TMP/haproxy.cfg, output to $TMP/haproxy.log. Does not wait.
run_haproxy() {
    haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy config invalid: $TMP/haproxy.cfg"
    start_bg haproxy "$TMP/haproxy.log" "$@" haproxy -db -f "$TMP/haproxy.cfg"
}

# run_varnishd NAME PORT [PREFIX...] -- [VARNISHD_ARG...]: start (under
# PREFIX) the Varnish instance NAME with $TMP/NAME.vcl (work dir $TMP/NAME,
# output to $TMP/NAME.log) on 127.0.0.1:PORT, no CLI port, malloc storage,
# one thread pool of VARNISH_THREADS threads (up to 5x), then VARNISHD_ARG.
# Does not wait.
run_varnishd() {
    local name=$1 port=$2 prefix=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do prefix+=("$1"); shift; done
    [ $# -eq 0 ] || shift
    start_bg "$name" "$TMP/$name.log" "${prefix[@]}" \
        varnishd -F -n "$TMP/$name" -f "$TMP/$name.vcl" -a "127.0.0.1:$port" -T none \
        -s malloc,256m -p thread_pools=1 -p thread_pool_min="$VARNISH_THREADS" \
        -p thread_pool_max=$((VARNISH_THREADS * 5)) "$@"
}

# is_hit SERVER FILE: whether the response whose headers are in FILE came
# from SERVER's cache (the floor has nothing else).
is_hit() {
    case $1 in
        floor) return 0 ;;
        sluice*) grep -qi '^cache-status: *sluice; *hit' "$2" ;;
        nginx* | pingap*) grep -qi '^x-cache-status: *hit' "$2" ;;
        haproxy*) grep -qi '^x-cache-hit: *1' "$2" ;;
        # Two transaction ids: this request's and the one that fetched the object.
        varnish*) grep -Eqi '^x-varnish: *[0-9]+ +[0-9]+' "$2" ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- configs ---
# write_nginx_conf DIR WORKERS CONNECTIONS [MAIN_LINE]: DIR/nginx.conf for an
# instance kept in DIR (pid, error log and temp paths there, not
# /var/lib/nginx) with WORKERS worker processes of CONNECTIONS connections
# each, MAIN_LINE in the main context, no access log and long keep-alive to
# the clients; stdin is the rest of its http block.
write_nginx_conf() {
    local dir=$1 workers=$2 conns=$3 main=${4:-}
    mkdir -p "$dir"
    {
        cat <<EOF
worker_processes $workers;${main:+
$main}
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 90s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

# nginx_upstream PORT...: the upstream "origin" of 127.0.0.1:PORT..., with up
# to 64 idle keep-alive connections.
nginx_upstream() {
    local port
    echo "    upstream origin {"
    for port in "$@"; do echo "        server 127.0.0.1:$port;"; done
    cat <<'EOF'
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }
EOF
}

# nginx_cache_gzip DIR: the cache zone "bench" in DIR/cache, and gzip level 1
# for sluice's default types (http block lines).
nginx_cache_gzip() {
    cat <<EOF
    # On disk (the page cache in practice): nginx's only cache store.
    proxy_cache_path $1/cache levels=1:2 keys_zone=bench:10m max_size=256m
                     inactive=10m use_temp_path=off;

    # text/html is always in gzip_types; the rest mirrors sluice's default types.
    gzip on;
    gzip_comp_level 1;
    gzip_min_length 1024;
    gzip_vary on;
    gzip_types text/plain text/css text/javascript application/json application/javascript
               application/xml image/svg+xml;
EOF
}

# nginx_proxy_headers [INDENT]: keep-alive to the upstream and sluice's
# request header work (X-Forwarded-For/-Proto/-Host, Via), each line after
# INDENT.
nginx_proxy_headers() {
    sed "s/^/${1:-}/" <<'EOF'
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Host $http_host;
proxy_set_header Via "1.1 nginx";
EOF
}

# haproxy_defaults CLIENT_TIMEOUT: the defaults section of haproxy.cfg, HTTP
# with keep-alive on both sides.
haproxy_defaults() {
    cat <<EOF
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client $1
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 90s
    http-reuse always
EOF
}

# ---------------------------------------------------------------- measure ---
# wrk_run OUTFILE NAME DURATION URL [WRK_ARG...]: one wrk run against URL
# (WRK_THREADS threads, WRK_CONNS connections, latency percentiles) into
# OUTFILE; when wrk fails, show OUTFILE and die naming NAME.
wrk_run() {
    local out=$1 name=$2 duration=$3 url=$4
    shift 4
    # In the background and waited for, so that a signal stops it at once.
    "${WRK_PREFIX[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$duration" --latency "$@" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$out" >&2; die "wrk against $name failed"; }
    WRK_PID=
}

# parse_wrk FILE -> "rps p99_ms errors non2xx requests"
parse_wrk() {
    awk '
        function ms(v,  n) {
            n = v + 0
            if (v ~ /us$/) return n / 1000
            if (v ~ /ms$/) return n
            if (v ~ /m$/)  return n * 60000
            if (v ~ /s$/)  return n * 1000
            return n
        }
        / requests in /                  { reqs = $1 }
        /^Requests\/sec:/               { rps = $2 }
        /^ +99%/                         { p99 = ms($2) }
        /Socket errors:/                 { gsub(/,/, ""); err = $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/      { non2xx = $NF }
        END {
            if (rps == "" || p99 == "" || reqs == "") exit 1
            printf "%s %.3f %d %d %d\n", rps, p99, err, non2xx, reqs
        }' "$1"
}

# ----------------------------------------------------------------- report ---
# tree_pids ROOT: ROOT and all its descendants (nginx's and Varnish's
# workers are children of the process started).
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            keep[root] = 1
            do { more = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; more = 1 } } while (more)
            for (p in keep) print p
        }'
}

# tree_cpu_ticks ROOT: the CPU time (user + system, every thread, in clock
# ticks) of ROOT and all its descendants so far.
tree_cpu_ticks() {
    # shellcheck disable=SC2046 # a word list of PIDs
    for p in $(tree_pids "$1"); do cat "/proc/$p/stat" 2>/dev/null || true; done \
        | awk '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s + 0 }'
}

# median SCENARIO TARGET COLUMN: the median of COLUMN over the rounds.
median() {
    awk -F'\t' -v s="$1" -v t="$2" -v c="$3" 'NR > 1 && $1 == s && $2 == t { print $c }' "$TMP/results.tsv" \
        | median_of_lines
}
# median_of_lines: the median of the numbers on stdin, one a line; fails on none.
median_of_lines() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# column_sum SCENARIO TARGET COLUMN: the sum of COLUMN over the rounds.
column_sum() {
    awk -F'\t' -v s="$1" -v t="$2" -v c="$3" 'NR > 1 && $1 == s && $2 == t { n += $c } END { print n + 0 }' "$TMP/results.tsv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# run_errors SCENARIO TARGET...: " TARGET: E socket errors, N non-2xx;" for
# every TARGET that had any (columns 6 and 7); nothing when all ran clean.
run_errors() {
    local scen=$1 t e n
    shift
    for t in "$@"; do
        e=$(column_sum "$scen" "$t" 6)
        n=$(column_sum "$scen" "$t" 7)
        [ "$e" = 0 ] && [ "$n" = 0 ] || printf ' %s: %s socket errors, %s non-2xx;' "$t" "$e" "$n"
    done
}

# version_of nginx|haproxy|varnishd|wrk: the program's version, as reported.
version_of() {
    case $1 in
        nginx) nginx -v 2>&1 | sed 's/^nginx version: //' || true ;;
        haproxy) haproxy -v 2>&1 | sed -n '1{s/^HAProxy version //; s/ - https.*//; p}' || true ;;
        varnishd) varnishd -V 2>&1 | sed -n '1{s/^varnishd (//; s/ revision.*//; p}' || true ;;
        wrk) wrk -v 2>&1 | sed -n '1{s/^wrk //; s/ Copyright.*//; p}' || true ;;
        pingap) "$PINGAP_BIN" --version 2>&1 | sed -n '1{s/^pingap //; s/ (.*//; p}' || true ;;
    esac
}

# repo_rev FALLBACK: the repo's short HEAD, or FALLBACK. repo_dirty: whether
# the working tree has uncommitted changes.
repo_rev() { git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "$1"; }
repo_dirty() { [ -n "$(git -C "$REPO" status --porcelain 2>/dev/null || true)" ]; }

# machine_lines: the report's lines on the machine and on the sluice build.
machine_lines() {
    local cpu_model dirty=""
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    ! repo_dirty || dirty=" (uncommitted changes)"
    echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- sluice $(repo_rev unknown)$dirty ($(rustc --version 2>/dev/null || echo rustc ?)), release build"
}

# rounds_details: every round of $TMP/results.tsv, folded away in the report.
rounds_details() {
    echo
    echo "<details><summary>all rounds</summary>"
    echo
    echo '```'
    column -t -s $'\t' "$TMP/results.tsv" 2>/dev/null || cat "$TMP/results.tsv"
    echo '```'
    echo
    echo "</details>"
}
