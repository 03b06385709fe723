#!/usr/bin/env bash
# Load harness: requests per second and latency through kingress vs straight to the echo
# backend (and, with --with-nginx, through nginx), plus the change-to-live latency of a
# manifest edit. Everything listens on and talks to 127.0.0.1 only. See README.md here.
#
#   benches/load/run.sh [--with-nginx] [--skip-reload] [--duration 10s] [--connections 64]
#                       [--threads 2] [--iterations 200] [--port-base 18000]
#
# Stops everything it started (by PID) on exit. Logs and manifests stay in the work
# folder it prints.
set -euo pipefail
# shellcheck source=benches/load/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WITH_NGINX=0
SKIP_RELOAD=0
DURATION=10s
CONNECTIONS=64
THREADS=2
ITERATIONS=200
PORT_BASE=${BENCH_PORT_BASE:-18000}

while [ $# -gt 0 ]; do
    case "$1" in
        --with-nginx) WITH_NGINX=1 ;;
        --skip-reload) SKIP_RELOAD=1 ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --iterations) ITERATIONS=$2; shift ;;
        --port-base) PORT_BASE=$2; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

ECHO1_PORT=$((PORT_BASE + 1))
ECHO2_PORT=$((PORT_BASE + 2))
HTTP_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 81))
HTTPS_PORT=$((PORT_BASE + 43))
NGINX_PORT=$((PORT_BASE + 90))
HOST=127.0.0.1

# Processes we start are stopped by PID on exit (PIDS, cleanup: common.sh).
trap cleanup EXIT
trap 'exit 130' INT TERM

require_free_ports "$ECHO1_PORT" "$ECHO2_PORT" "$HTTP_PORT" "$ADMIN_PORT" "$HTTPS_PORT" "$NGINX_PORT"

# --- tools ----------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
fi
if [ "$WITH_NGINX" = 1 ] && ! command -v nginx >/dev/null; then
    log "installing nginx"
    apt-get install -y nginx-light || { apt-get update && apt-get install -y nginx-light; }
fi
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }

log "building (release)"
cargo build --release -p kingress
if [ "$SKIP_RELOAD" = 0 ]; then
    cargo build --release -p kingress-benches --bin reload-latency
fi
KINGRESS=$ROOT/target/release/kingress

make_work kingress-load

# --- backends ---------------------------------------------------------------------------
start_echo_backends

# --- manifests: Service + 2 EndpointSlices, an Ingress --------------------------------------
write_echo_manifest
cat >"$MANIFESTS/bench.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: default}
spec:
  ingressClassName: kingress
  rules:
  - host: bench.local
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: echo, port: {number: 80}}
EOF

# --- kingress -------------------------------------------------------------------------------
log "starting kingress on $HOST:$HTTP_PORT (admin $HOST:$ADMIN_PORT)"
start_kingress --https-listen "$HOST:$HTTPS_PORT"
wait_status 200 "http://$HOST:$HTTP_PORT/" -H 'Host: bench.local'

# --- optional: nginx with an equivalent proxy_pass ---------------------------------------------------
if [ "$WITH_NGINX" = 1 ]; then
    log "starting nginx on $HOST:$NGINX_PORT"
    mkdir -p "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
# Same job as kingress here: one host, / to two echo endpoints, keepalive upstream,
# the X-Forwarded-* / X-Request-ID headers ingress-nginx sets. worker_processes auto
# (2 on this machine), as kingress runs one worker thread per core.
$(nginx_conf_main)
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    upstream echo {
        server 127.0.0.1:$ECHO1_PORT;
        server 127.0.0.1:$ECHO2_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name bench.local;
        location / {
$(nginx_proxy_to_echo)
        }
    }
}
EOF
    start_nginx
    wait_status 200 "http://$HOST:$NGINX_PORT/" -H 'Host: bench.local'
fi

# --- throughput and latency ------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"
# run_wrk NAME URL PROXY_PIDS... : wrk against URL, and the CPU the proxy (if any) and
# the echo backends used meanwhile.
run_wrk() {
    local name=$1 url=$2; shift 2
    local proxy_pids=("$@")
    log "wrk: $name ($url)"
    # Anything else busy on the machine skews the figures: show it.
    echo "load average before: $(loadavg)"
    local cmd=(wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency -H 'Host: bench.local' "$url")
    show_cmd "${cmd[@]}"
    local p0 e0 p1 e1 out
    p0=$(cpu_ticks "${proxy_pids[@]}")
    e0=$(cpu_ticks "$ECHO1_PID" "$ECHO2_PID")
    out=$("${cmd[@]}")
    p1=$(cpu_ticks "${proxy_pids[@]}")
    e1=$(cpu_ticks "$ECHO1_PID" "$ECHO2_PID")
    echo "$out"
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "WARNING: $name answered non-2xx responses" >&2
    fi
    local requests proxy_cpu echo_cpu per_request="-"
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    proxy_cpu=$(ticks_secs $((p1 - p0)))
    echo_cpu=$(ticks_secs $((e1 - e0)))
    if [ "${#proxy_pids[@]}" -gt 0 ] && [ "${requests:-0}" -gt 0 ]; then
        per_request=$(awk -v t=$((p1 - p0)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.1fus", t / hz / n * 1e6}')
        echo "proxy CPU: ${proxy_cpu}s (${per_request} per request); echo backends CPU: ${echo_cpu}s"
    else
        echo "echo backends CPU: ${echo_cpu}s"
    fi
    printf '%-9s %10s req/s   p50 %-8s p99 %-8s proxy CPU/request %-8s\n' "$name" \
        "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
        "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        "$per_request" >>"$RESULTS"
}

run_wrk direct "http://$HOST:$ECHO1_PORT/"
run_wrk kingress "http://$HOST:$HTTP_PORT/" "$KINGRESS_PID"
if [ "$WITH_NGINX" = 1 ]; then
    # The master only supervises; the workers do the proxying.
    mapfile -t NGINX_WORKERS < <(pgrep -P "$NGINX_PID")
    run_wrk nginx "http://$HOST:$NGINX_PORT/" "${NGINX_WORKERS[@]}"
fi

# --- change-to-live latency ---------------------------------------------------------------
RELOAD_OUT=""
if [ "$SKIP_RELOAD" = 0 ]; then
    log "change-to-live latency ($ITERATIONS edits)"
    RELOAD_OUT=$("$ROOT/target/release/reload-latency" --manifests "$MANIFESTS" \
        --http "$HOST:$HTTP_PORT" --iterations "$ITERATIONS" \
        --host reload.local --service echo --port 80)
    echo "$RELOAD_OUT"
fi

log "summary ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, load average now $(loadavg))"
cat "$RESULTS"
if [ -n "$RELOAD_OUT" ]; then echo "$RELOAD_OUT"; fi
echo "logs: $WORK"
