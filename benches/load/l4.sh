#!/usr/bin/env bash
# L4 harness (issue 6): TCP throughput (GB/s) and new connections per second through a
# kingress L4 port (a Service of type LoadBalancer, --l4-services), against the same
# transfer straight to the backend and through HAProxy in TCP mode, on the same run.
# Everything listens on and talks to 127.0.0.1 only. See README.md here.
#
#   benches/load/l4.sh [--bytes 4294967296] [--duration 10] [--concurrency 32]
#                      [--haproxy-splice] [--port-base 18700]
#
# --bytes is the total of each throughput test (split over its streams), --duration the
# seconds of each connection-rate test (plus 1 s of warm-up). Per target (direct, kingress,
# haproxy): throughput with 1 stream, with 8 streams, then connrate. Stops everything it
# started (by PID) on exit. Logs, manifests and the HAProxy config stay in the work folder.
set -euo pipefail
# shellcheck source=benches/load/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BYTES=$((4 << 30))
DURATION=10
CONCURRENCY=32
HAPROXY_SPLICE=0
PORT_BASE=${BENCH_PORT_BASE:-18700}

while [ $# -gt 0 ]; do
    case "$1" in
        --bytes) BYTES=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --concurrency) CONCURRENCY=$2; shift ;;
        --haproxy-splice) HAPROXY_SPLICE=1 ;;
        --port-base) PORT_BASE=$2; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

HOST=127.0.0.1
BACKEND_PORT=$((PORT_BASE + 1))
KINGRESS_L4_PORT=$((PORT_BASE + 10))
HAPROXY_PORT=$((PORT_BASE + 20))
HTTP_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 81))
HTTPS_PORT=$((PORT_BASE + 43))

# Processes we start are stopped by PID on exit (PIDS, cleanup: common.sh).
trap cleanup EXIT
trap 'exit 130' INT TERM

require_free_ports "$BACKEND_PORT" "$KINGRESS_L4_PORT" "$HAPROXY_PORT" "$HTTP_PORT" "$ADMIN_PORT" "$HTTPS_PORT"

# --- tools ----------------------------------------------------------------------------
if ! command -v haproxy >/dev/null; then log "installing haproxy"; apt_install haproxy; fi
command -v curl >/dev/null || { log "installing curl"; apt_install curl; }
# pingora's zlib-ng needs cmake (installed from apt when missing).
bash scripts/bootstrap.sh

log "building (release)"
cargo build --release -p kingress -p kingress-benches --locked
KINGRESS=$ROOT/target/release/kingress
LOAD=$ROOT/target/release/l4-load

make_work kingress-l4

# wait_forwarding PORT PID: polls until `l4-load check` gets its byte back through PORT (no
# fixed sleeps); fails after ~30 s or as soon as process PID is gone.
wait_forwarding() {
    local port=$1 pid=$2 deadline=$((SECONDS + 30))
    until "$LOAD" check --target "$HOST:$port" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid serving $HOST:$port exited; see $WORK" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for $HOST:$port to forward" >&2
            return 1
        fi
        sleep 0.02
    done
}

# --- the sink/source backend ----------------------------------------------------------------
log "starting the l4-load backend on $HOST:$BACKEND_PORT"
"$LOAD" backend --listen "$HOST:$BACKEND_PORT" >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_forwarding "$BACKEND_PORT" "$BACKEND_PID"

# --- kingress: a LoadBalancer Service on KINGRESS_L4_PORT, its EndpointSlice -> the backend ---
cat >"$MANIFESTS/sink.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: sink, namespace: default}
spec:
  type: LoadBalancer
  ports:
  - {name: tcp, port: $KINGRESS_L4_PORT, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sink-1
  namespace: default
  labels: {kubernetes.io/service-name: sink}
addressType: IPv4
ports:
- {name: tcp, port: $BACKEND_PORT, protocol: TCP}
endpoints:
- addresses: [$HOST]
  conditions: {ready: true}
EOF
log "starting kingress: L4 $HOST:$KINGRESS_L4_PORT (http $HOST:$HTTP_PORT, https $HOST:$HTTPS_PORT, admin $HOST:$ADMIN_PORT; unused)"
show_cmd "$KINGRESS" run --manifests "$MANIFESTS" --http-listen "$HOST:$HTTP_PORT" --admin-listen "$HOST:$ADMIN_PORT" \
    --https-listen "$HOST:$HTTPS_PORT" --l4-services --l4-bind "$HOST" --worker-threads 2
start_kingress --https-listen "$HOST:$HTTPS_PORT" --l4-services --l4-bind "$HOST" --worker-threads 2
wait_forwarding "$KINGRESS_L4_PORT" "$KINGRESS_PID"

# --- HAProxy: mode tcp, one frontend, one server (the same backend) ------------------------
log "starting haproxy: $HOST:$HAPROXY_PORT ($(haproxy -v | head -n1))"
mkdir -p "$WORK/haproxy"
splice_line="# no splice: HAProxy's default (--haproxy-splice turns on option splice-auto)"
[ "$HAPROXY_SPLICE" = 1 ] && splice_line="option splice-auto"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
# The same job as the kingress L4 port: TCP relay to one server, no logging, 2 threads
# (kingress runs with --worker-threads 2; the machine has $(nproc) cores).
global
    nbthread 2
    # plenty for 32 loops; with splice-auto HAProxy also reserves maxconn/4 pipes (2 fds each),
    # and 8000 would need more than this container's 20,000 open files
    maxconn 4000
    pidfile $WORK/haproxy/haproxy.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    $splice_line

frontend l4
    bind $HOST:$HAPROXY_PORT
    default_backend sink

backend sink
    server sink1 $HOST:$BACKEND_PORT
EOF
haproxy -c -f "$WORK/haproxy/haproxy.cfg" >/dev/null
haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_forwarding "$HAPROXY_PORT" "$HAPROXY_PID"

# --- what else runs: sampled once a second into others.log for the whole measurement: builds
# (cargo, rustc, kube-scale, cc1) and every process in state R at that instant ---------------
(
    while :; do
        echo "$(date +%T) load $(loadavg) | $(pgrep -a 'cargo|rustc|kube-scale|cc1' 2>/dev/null | awk '{print $2}' | xargs -r -n1 basename | sort | uniq -c | xargs) | running: $(ps -eo stat=,comm= | awk '$1 ~ /^R/ {print $2}' | sort | uniq -c | xargs)"
        sleep 1
    done
) >"$WORK/others.log" 2>&1 &
PIDS+=("$!")

# --- measurements ------------------------------------------------------------------------------
declare -A PORT=([direct]=$BACKEND_PORT [kingress]=$KINGRESS_L4_PORT [haproxy]=$HAPROXY_PORT)
declare -A PROXY_PID=([direct]="" [kingress]=$KINGRESS_PID [haproxy]=$HAPROXY_PID)
RESULTS=$WORK/results.txt
: >"$RESULTS"
printf '%-9s %-22s %10s %10s %10s %8s %12s %12s %10s\n' target test result "p50/min" "p99/max" errors "proxy CPU s" "proxy/unit" "backend s" >>"$RESULTS"

preamble() {
    local others
    others=$(pgrep -c 'cargo|rustc|kube-scale|cc1' 2>/dev/null || true)
    echo "load average before: $(loadavg); cargo/rustc/kube-scale/cc1 processes: ${others:-0}"
}
# measure TARGET CMD...: shows CMD and runs it. Sets OUT (what it printed, then a "client
# CPU:" line), PROXY_TICKS (TARGET's proxy CPU meanwhile; 0 for direct) and BACKEND_TICKS.
measure() {
    local target=$1; shift
    show_cmd "$@"
    local proxy=${PROXY_PID[$target]} p0=0 p1=0 b0 b1
    [ -n "$proxy" ] && p0=$(cpu_ticks "$proxy")
    b0=$(cpu_ticks "$BACKEND_PID")
    OUT=$( { TIMEFORMAT='client CPU: %U s user, %S s system'; time "$@"; } 2>&1) || true
    [ -n "$proxy" ] && p1=$(cpu_ticks "$proxy")
    b1=$(cpu_ticks "$BACKEND_PID")
    echo "$OUT"
    PROXY_TICKS=$((p1 - p0))
    BACKEND_TICKS=$((b1 - b0))
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# run_throughput TARGET STREAMS
run_throughput() {
    local target=$1 streams=$2
    local per=$((BYTES / streams))
    log "throughput, $streams stream(s) x $per bytes: $target"
    preamble
    measure "$target" "$LOAD" throughput --target "$HOST:${PORT[$target]}" --streams "$streams" --bytes "$per"
    local res gbps bytes smin smax errors cpu_per
    res=$(grep '^RESULT' <<<"$OUT" || true)
    if [ -z "$res" ]; then
        printf '%-9s %-22s FAILED (see above)\n' "$target" "throughput x$streams" >>"$RESULTS"
        return
    fi
    gbps=$(field gbps "$res"); bytes=$(field bytes "$res"); errors=$(field errors "$res")
    smin=$(field stream_min "$res"); smax=$(field stream_max "$res")
    # proxy CPU seconds per GB moved (10^9 bytes)
    cpu_per=$(awk -v t="$PROXY_TICKS" -v hz="$CLK_TCK" -v b="$bytes" \
        'BEGIN { if (t > 0 && b > 0) printf "%.3f s/GB", t / hz / (b / 1e9); else printf "-" }')
    echo "proxy CPU: $(ticks_secs "$PROXY_TICKS") s, backend CPU: $(ticks_secs "$BACKEND_TICKS") s"
    printf '%-9s %-22s %10s %10s %10s %8s %12s %12s %10s\n' "$target" "throughput x$streams" "$gbps GB/s" \
        "$smin" "$smax" "$errors" "$(ticks_secs "$PROXY_TICKS")" "$cpu_per" "$(ticks_secs "$BACKEND_TICKS")" >>"$RESULTS"
}

# run_connrate TARGET
run_connrate() {
    local target=$1
    log "connection rate, $CONCURRENCY loops, ${DURATION}s (+1 s warm-up): $target"
    preamble
    measure "$target" "$LOAD" connrate --target "$HOST:${PORT[$target]}" --concurrency "$CONCURRENCY" \
        --duration-secs "$DURATION" --warmup-secs 1
    local res rate all p50 p99 errors cpu_per
    res=$(grep '^RESULT' <<<"$OUT" || true)
    if [ -z "$res" ]; then
        printf '%-9s %-22s FAILED (see above)\n' "$target" "connrate c$CONCURRENCY" >>"$RESULTS"
        return
    fi
    rate=$(field rate "$res"); all=$(field all "$res"); errors=$(field errors "$res")
    p50=$(field p50_ms "$res"); p99=$(field p99_ms "$res")
    # proxy CPU per connection, warm-up included on both sides of the division
    cpu_per=$(awk -v t="$PROXY_TICKS" -v hz="$CLK_TCK" -v n="$all" \
        'BEGIN { if (t > 0 && n > 0) printf "%.1f us/conn", t / hz / n * 1e6; else printf "-" }')
    echo "proxy CPU: $(ticks_secs "$PROXY_TICKS") s for $all connections (warm-up included): $cpu_per"
    printf '%-9s %-22s %10s %10s %10s %8s %12s %12s %10s\n' "$target" "connrate c$CONCURRENCY" "$rate/s" \
        "${p50}ms" "${p99}ms" "$errors" "$(ticks_secs "$PROXY_TICKS")" "$cpu_per" "$(ticks_secs "$BACKEND_TICKS")" >>"$RESULTS"
}

TARGETS=(direct kingress haproxy)
for t in "${TARGETS[@]}"; do run_throughput "$t" 1; done
for t in "${TARGETS[@]}"; do run_throughput "$t" 8; done
for t in "${TARGETS[@]}"; do run_connrate "$t"; done

log "summary ($(nproc) cores, $(uname -r), $(haproxy -v | head -n1 | cut -d' ' -f1-3); throughput: $BYTES bytes per test; connrate: $CONCURRENCY loops ${DURATION}s; load average now $(loadavg))"
echo "throughput columns: GB/s overall, then slowest and fastest stream's own GB/s; connrate: p50 and p99 of connect + 1-byte round trip"
cat "$RESULTS"
busy=$(grep -c 'cargo\|rustc\|kube-scale\|cc1' "$WORK/others.log" || true)
echo "seconds sampled with cargo/rustc/kube-scale/cc1 running: ${busy:-0} of $(wc -l <"$WORK/others.log") (see $WORK/others.log)"
echo "logs: $WORK"
