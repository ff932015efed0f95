#!/usr/bin/env bash
# HTTP cache conformance: sluice, nginx and Varnish through the same public
# test suite, on this machine, in one run.
#
#   bash benches/cache-conformance.sh                     # all targets
#   TARGETS="nginx varnish" bash benches/cache-conformance.sh
#   TEST_ID=freshness-max-age bash benches/cache-conformance.sh   # one test, with
#                                                         # every request and response shown
#
# The suite is Mark Nottingham's HTTP caching tests (the ones behind
# cache-tests.fyi), published on npm as `http-cache-tests`; the script installs
# the pinned version with npm into SUITE_DIR. It has two halves: an origin
# server (run here on 127.0.0.1) and a client that, for every test, sends the
# origin the responses to give (PUT /config/<uuid>), then the test's requests,
# then reads what the origin saw (GET /state/<uuid>), all through the proxy
# under test. Each test is "required", "optimal" (optional) or "check" (only
# records a behaviour); the table counts them apart (see
# benches/conformance/summarize.mjs).
#
# Targets, each started in the foreground with its own config and temp dir
# on an ephemeral 127.0.0.1 port, in front of the one origin, and stopped at
# the end (configs in benches/conformance/, with why each setting is there):
#   direct   no proxy at all: the client talks to the origin (a baseline: what
#            "never caches anything" scores)
#   nginx    proxy_cache with revalidation, lock, use_stale, background update
#   varnish  builtin VCL (just the backend), -s malloc,256m
#   sluice   SLUICE_BIN with a route that has `cache = true` and a [cache]
#            section; if that binary does not accept those keys yet, it runs
#            without them (a warning says so) so the run still completes
#
# Environment (defaults in brackets):
#   TARGETS [nginx varnish sluice]   any of: direct nginx varnish sluice
#   RESULTS_DIR [/tmp/cache-conformance]   TARGET.json (the suite's raw results),
#                        summary.json, summary.txt (the table printed), logs/ and
#                        run/ (configs, caches) go here
#   SUITE_DIR [$RESULTS_DIR/suite]   where the suite is installed (kept between runs)
#   SUITE_VERSION [0.4.5]            http-cache-tests version from npm
#   SUITE_SOURCE [unset]             a checkout of github.com/http-tests/cache-tests
#                                    to run instead (its newest tests and engine; the
#                                    npm release can lag it by years on some tests);
#                                    its npm dependencies are installed into it
#   SLUICE_BIN [target/release/sluice]   relative paths are from the repo root
#   SLUICE_TEMPLATE [benches/conformance/sluice.toml.in]   sluice config template
#   BUILD [0]            1: cargo build --release first (into CARGO_TARGET_DIR if set)
#   TEST_ID              run only this test id against each target, verbosely
#   SKIP_INSTALL [0]     1: never call apt-get or npm install
#   DETAILS [1]          0: leave out the per-test list of required tests that differ
#   VARNISH_ARGS []      extra varnishd arguments, e.g. "-p default_ttl=0" to see how
#                        much Varnish's 120 s default lifetime costs it (not a default
#                        an operator gets, so not used unless asked)
#
# The number to compare is "required passed": required tests passed, counting
# a test only when the tests it depends on passed too (see summarize.mjs).
# A full run takes about 15-20 s per target plus start-up (under a minute for
# the three; the first run also spends a few seconds on npm install). Results
# are deterministic from run to run: the suite's timing is fixed (3 s pauses).
#
# Exit status: 0 when every target produced results (whatever they are).

# The start_TARGET functions are called as "start_$target", which shellcheck
# cannot follow.
# shellcheck disable=SC2317

set -euo pipefail

TARGETS=${TARGETS:-nginx varnish sluice}
RESULTS_DIR=${RESULTS_DIR:-/tmp/cache-conformance}
SUITE_DIR=${SUITE_DIR:-$RESULTS_DIR/suite}
SUITE_VERSION=${SUITE_VERSION:-0.4.5}
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
SLUICE_TEMPLATE=${SLUICE_TEMPLATE:-benches/conformance/sluice.toml.in}
BUILD=${BUILD:-0}
TEST_ID=${TEST_ID:-}
SKIP_INSTALL=${SKIP_INSTALL:-0}
VARNISH_ARGS=${VARNISH_ARGS:-}

# log, die, install_missing, the cleanup on exit (PIDS), wait_http, ...;
# changes to the repo root.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONF=$REPO/benches/conformance

for t in $TARGETS; do
    case $t in direct | nginx | varnish | sluice) ;; *) die "unknown target '$t' (direct nginx varnish sluice)" ;; esac
done
case $SLUICE_BIN in /*) ;; *) SLUICE_BIN=$REPO/$SLUICE_BIN ;; esac
case $SLUICE_TEMPLATE in /*) ;; *) SLUICE_TEMPLATE=$REPO/$SLUICE_TEMPLATE ;; esac
case $RESULTS_DIR in /*) ;; *) RESULTS_DIR=$REPO/$RESULTS_DIR ;; esac
case $SUITE_DIR in /*) ;; *) SUITE_DIR=$REPO/$SUITE_DIR ;; esac
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- install ---
install_packages() {
    local need=(node:nodejs npm curl)
    if has_target nginx; then need+=(nginx); fi
    if has_target varnish; then
        need+=(varnishd:varnish cc:gcc) # varnishd compiles VCL with cc
    fi
    install_missing "nginx varnish" "${need[@]}"
}

install_suite() {
    local have=""
    [ -f "$SUITE_DIR/node_modules/http-cache-tests/package.json" ] &&
        have=$(node -p "require('$SUITE_DIR/node_modules/http-cache-tests/package.json').version" 2>/dev/null || true)
    [ "$have" = "$SUITE_VERSION" ] && return 0
    [ "$SKIP_INSTALL" = 1 ] && die "suite not installed in $SUITE_DIR (and SKIP_INSTALL=1)"
    log "npm install http-cache-tests@$SUITE_VERSION into $SUITE_DIR"
    mkdir -p "$SUITE_DIR"
    [ -f "$SUITE_DIR/package.json" ] || echo '{ "name": "cache-conformance-suite", "private": true }' >"$SUITE_DIR/package.json"
    npm install --prefix "$SUITE_DIR" --no-audit --no-fund --save-exact "http-cache-tests@$SUITE_VERSION" >&2
}

install_packages
if [ -n "${SUITE_SOURCE:-}" ]; then
    [ -f "$SUITE_SOURCE/test-engine/cli.mjs" ] || die "SUITE_SOURCE=$SUITE_SOURCE is not a cache-tests checkout"
    if [ ! -d "$SUITE_SOURCE/node_modules" ]; then
        [ "$SKIP_INSTALL" = 1 ] && die "no node_modules in $SUITE_SOURCE (and SKIP_INSTALL=1)"
        log "npm install in $SUITE_SOURCE"
        npm install --prefix "$SUITE_SOURCE" --no-audit --no-fund >&2
    fi
    SUITE=$SUITE_SOURCE/test-engine
    SUITE_TESTS=$SUITE_SOURCE
    SUITE_VERSION="source $(git -C "$SUITE_SOURCE" rev-parse --short HEAD 2>/dev/null || echo checkout)"
else
    install_suite
    SUITE=$SUITE_DIR/node_modules/http-cache-tests
    SUITE_TESTS=$SUITE
fi

if has_target sluice; then
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release --bin sluice"
        cargo build --release --bin sluice >&2
        SLUICE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/sluice
    fi
    [ -x "$SLUICE_BIN" ] || die "no sluice binary at $SLUICE_BIN (build it, set SLUICE_BIN, or BUILD=1)"
fi

# ---------------------------------------------------------------- cleanup ---
mkdir -p "$RESULTS_DIR/logs"
RUN=$RESULTS_DIR/run
rm -rf "$RUN"
mkdir -p "$RUN"
# nginx workers and varnishd's worker drop to unprivileged users when started
# as root: they need to reach their dirs under RUN.
chmod 755 "$RESULTS_DIR" "$RUN"
# Every process started goes into PIDS (lib.sh), stopped on exit.

# free_port: a port nothing listens on right now (the kernel picks it).
free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'
}

# fill TEMPLATE OUT KEY=VALUE...: copy TEMPLATE to OUT with @KEY@ replaced.
fill() {
    local tpl=$1 out=$2 kv expr=()
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tpl" >"$out"
}

# ----------------------------------------------------------------- origin ---
ORIGIN_PORT=$(free_port)
# The wrapper binds the suite's server to 127.0.0.1; port and pid file are
# passed the way `npm run server --port=..` would.
npm_config_port=$ORIGIN_PORT npm_config_protocol=http npm_config_pidfile=$RUN/origin.pid \
    node "$CONF/origin.mjs" "$SUITE/server/server.mjs" >"$RESULTS_DIR/logs/origin.log" 2>&1 &
PIDS+=("$!")
wait_http origin "$ORIGIN_PORT" $! "$RESULTS_DIR/logs/origin.log"

# ---------------------------------------------------------------- targets ---
TARGET_PID=
TARGET_PORT=
declare -A NOTE=()
declare -A VERSION=()

start_nginx() {
    local dir=$RUN/nginx
    mkdir -p "$dir"
    TARGET_PORT=$(free_port)
    fill "$CONF/nginx.conf.in" "$dir/nginx.conf" RUN="$dir" PORT="$TARGET_PORT" ORIGIN_PORT="$ORIGIN_PORT"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >&2 ||
        die "nginx rejects $dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
        >"$RESULTS_DIR/logs/nginx.log" 2>&1 &
    TARGET_PID=$!
    VERSION[nginx]=$(version_of nginx)
    wait_http nginx "$TARGET_PORT" "$TARGET_PID" "$dir/error.log"
}

start_varnish() {
    local dir=$RUN/varnish jail=()
    mkdir -p "$dir"
    TARGET_PORT=$(free_port)
    fill "$CONF/varnish.vcl.in" "$dir/default.vcl" ORIGIN_PORT="$ORIGIN_PORT"
    # As the Debian unit does: the unix jail with the vcache user when root.
    if [ "$(id -u)" -eq 0 ] && id vcache >/dev/null 2>&1; then jail=(-j "unix,user=vcache"); fi
    # -F foreground, -n its own work dir (not /var/lib/varnish), -T none: no
    # management port (nothing here uses it).
    # shellcheck disable=SC2086 # VARNISH_ARGS is a word list
    varnishd -F "${jail[@]}" -n "$dir/work" -a "127.0.0.1:$TARGET_PORT" -T none \
        -f "$dir/default.vcl" -s malloc,256m $VARNISH_ARGS >"$RESULTS_DIR/logs/varnish.log" 2>&1 &
    TARGET_PID=$!
    VERSION[varnish]=$(version_of varnishd)
    [ -z "$VARNISH_ARGS" ] || NOTE[varnish]="extra varnishd arguments: $VARNISH_ARGS"
    wait_http varnish "$TARGET_PORT" "$TARGET_PID" "$RESULTS_DIR/logs/varnish.log"
}

start_sluice() {
    local dir=$RUN/sluice
    mkdir -p "$dir"
    TARGET_PORT=$(free_port)
    fill "$SLUICE_TEMPLATE" "$dir/sluice.toml" PORT="$TARGET_PORT" ORIGIN_PORT="$ORIGIN_PORT"
    if ! "$SLUICE_BIN" --config "$dir/sluice.toml" --check >"$dir/check.log" 2>&1; then
        # Not accepted as is: without the cache lines, does it pass?
        grep -v '#@cache$' "$dir/sluice.toml" >"$dir/sluice-nocache.toml"
        "$SLUICE_BIN" --config "$dir/sluice-nocache.toml" --check >>"$dir/check.log" 2>&1 ||
            { cat "$dir/check.log" >&2; die "sluice rejects $dir/sluice-nocache.toml too"; }
        log "WARNING: this sluice rejects the cache settings; running it WITHOUT a cache:"
        sed 's/^/      /' "$dir/check.log" | head -5 >&2
        NOTE[sluice]="cache settings rejected by this binary: ran as a plain proxy"
        mv "$dir/sluice-nocache.toml" "$dir/sluice.toml"
    fi
    RUST_LOG=${RUST_LOG:-warn} "$SLUICE_BIN" --config "$dir/sluice.toml" >"$RESULTS_DIR/logs/sluice.log" 2>&1 &
    TARGET_PID=$!
    local dirty=""
    ! repo_dirty || dirty=", uncommitted changes"
    VERSION[sluice]="$("$SLUICE_BIN" --version 2>/dev/null | head -1), $SLUICE_BIN (repo at $(repo_rev '?')$dirty)"
    wait_http sluice "$TARGET_PORT" "$TARGET_PID" "$RESULTS_DIR/logs/sluice.log"
}

start_direct() {
    TARGET_PID=
    TARGET_PORT=$ORIGIN_PORT
    VERSION[direct]="no proxy"
}

# run_suite TARGET: the suite's CLI against 127.0.0.1:TARGET_PORT.
run_suite() {
    local target=$1 out=$RESULTS_DIR/$1.json start
    start=$(date +%s)
    # npm_package_config_* are what `npm run cli --base=.. --id=..` passes;
    # set directly, an empty id means "all tests".
    (cd "$SUITE" && npm_package_config_base="http://127.0.0.1:$TARGET_PORT" \
        npm_package_config_id="$TEST_ID" node --no-warnings cli.mjs) \
        >"$out.tmp" 2>"$RESULTS_DIR/logs/$target.client.log" &
    local client=$!
    PIDS+=("$client")
    wait "$client" || true
    forget_pid "$client"
    if [ -n "$TEST_ID" ]; then
        cat "$out.tmp"
        rm -f "$out.tmp"
    elif node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$out.tmp" 2>/dev/null; then
        mv "$out.tmp" "$out"
    else
        mv "$out.tmp" "$out.broken"
        rm -f "$out"
        log "$target: the suite's client produced no JSON (see $out.broken, logs/$target.client.log)"
    fi
    log "$target: suite finished in $(($(date +%s) - start))s"
}

RUN_START=$(date +%s)
for target in $TARGETS; do
    log "target $target"
    "start_$target"
    [ -z "$TARGET_PID" ] || PIDS+=("$TARGET_PID")
    [ -z "$TEST_ID" ] || printf '\n######## %s\n' "$target"
    run_suite "$target"
    if [ -n "$TARGET_PID" ]; then
        kill -0 "$TARGET_PID" 2>/dev/null || log "WARNING: $target died during the run (see $RESULTS_DIR/logs/)"
        stop_pids "$TARGET_PID"
        forget_pid "$TARGET_PID"
    fi
done
cleanup
[ -z "$TEST_ID" ] || exit 0

# ----------------------------------------------------------------- report ---
{
    printf '{\n  "suite": "http-cache-tests@%s",\n  "date": "%s",\n  "seconds": %d,\n  "targets": {' \
        "$SUITE_VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(($(date +%s) - RUN_START))"
    sep=""
    for t in $TARGETS; do
        printf '%s\n    "%s": { "version": "%s", "note": "%s" }' "$sep" "$t" "${VERSION[$t]:-}" "${NOTE[$t]:-}"
        sep=","
    done
    printf '\n  }\n}\n'
} >"$RESULTS_DIR/run.json"

{
    echo
    echo "## HTTP cache conformance (http-cache-tests $SUITE_VERSION, cache-tests.fyi's suite)"
    echo
    for t in $TARGETS; do
        echo "- $t: ${VERSION[$t]:-}${NOTE[$t]:+ -- ${NOTE[$t]}}"
    done
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - RUN_START)) s; raw results, summary.json and logs in $RESULTS_DIR"
    echo
    # shellcheck disable=SC2086 # TARGETS is a word list
    node "$CONF/summarize.mjs" "$SUITE_TESTS" "$RESULTS_DIR" $TARGETS
} | tee "$RESULTS_DIR/summary.txt"

status=0
for t in $TARGETS; do [ -f "$RESULTS_DIR/$t.json" ] || status=1; done
exit "$status"
