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
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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
NGINX_PORT=$((PORT_BASE + 90))
HOST=127.0.0.1

log() { printf '\n== %s\n' "$*"; }

# --- processes we start, stopped by PID on exit ------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "$ECHO1_PORT" "$ECHO2_PORT" "$HTTP_PORT" "$ADMIN_PORT" "$NGINX_PORT"; do
    port_free "$p" || { echo "port $HOST:$p is in use; pass --port-base N" >&2; exit 1; }
done

# Polls until `curl` gets the expected status (no fixed sleeps); gives up after ~30 s.
wait_status() {
    local want=$1 url=$2; shift 2
    local deadline=$((SECONDS + 30)) got
    while :; do
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [ "$got" = "$want" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for $want from $url (last: $got)" >&2
            return 1
        fi
        sleep 0.02
    done
}

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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kingress-load.XXXXXX")
MANIFESTS=$WORK/manifests
mkdir -p "$MANIFESTS"
echo "work folder: $WORK"

# --- backends ---------------------------------------------------------------------------
log "starting echo backends on $HOST:$ECHO1_PORT and $HOST:$ECHO2_PORT"
"$KINGRESS" echo --listen "$HOST:$ECHO1_PORT" --name e1 >"$WORK/echo-e1.log" 2>&1 &
ECHO1_PID=$!
PIDS+=("$ECHO1_PID")
"$KINGRESS" echo --listen "$HOST:$ECHO2_PORT" --name e2 >"$WORK/echo-e2.log" 2>&1 &
ECHO2_PID=$!
PIDS+=("$ECHO2_PID")
wait_status 200 "http://$HOST:$ECHO1_PORT/"
wait_status 200 "http://$HOST:$ECHO2_PORT/"

# --- manifests ------------------------------------------------------------------------------
cat >"$MANIFESTS/echo.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
EOF
for i in 1 2; do
    port_var=ECHO${i}_PORT
    cat >>"$MANIFESTS/echo.yaml" <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-e$i
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: http, port: ${!port_var}, protocol: TCP}
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: true}
EOF
done
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
"$KINGRESS" run --manifests "$MANIFESTS" \
    --http-listen "$HOST:$HTTP_PORT" --admin-listen "$HOST:$ADMIN_PORT" \
    >"$WORK/kingress.log" 2>&1 &
KINGRESS_PID=$!
PIDS+=("$KINGRESS_PID")
wait_status 200 "http://$HOST:$ADMIN_PORT/readyz"
wait_status 200 "http://$HOST:$HTTP_PORT/" -H 'Host: bench.local'

# --- optional: nginx with an equivalent proxy_pass ---------------------------------------------------
if [ "$WITH_NGINX" = 1 ]; then
    log "starting nginx on $HOST:$NGINX_PORT"
    mkdir -p "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
# Same job as kingress here: one host, / to two echo endpoints, keepalive upstream,
# the X-Forwarded-* / X-Request-ID headers ingress-nginx sets. worker_processes auto
# (2 on this machine), as kingress runs one worker thread per core.
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
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
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Request-ID \$request_id;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Port \$server_port;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Scheme \$scheme;
        }
    }
}
EOF
    nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_status 200 "http://$HOST:$NGINX_PORT/" -H 'Host: bench.local'
fi

# --- throughput and latency ------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"
CLK_TCK=$(getconf CLK_TCK)
# CPU time (utime + stime of all threads, in clock ticks) of the given processes.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
# run_wrk NAME URL PROXY_PIDS... : wrk against URL, and the CPU the proxy (if any) and
# the echo backends used meanwhile.
run_wrk() {
    local name=$1 url=$2; shift 2
    local proxy_pids=("$@")
    log "wrk: $name ($url)"
    # Anything else busy on the machine skews the figures: show it.
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    local cmd=(wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency -H 'Host: bench.local' "$url")
    printf '$'; printf ' %q' "${cmd[@]}"; printf '\n'
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
    proxy_cpu=$(awk -v t=$((p1 - p0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
    echo_cpu=$(awk -v t=$((e1 - e0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
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

log "summary ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, load average now $(cut -d' ' -f1-3 /proc/loadavg))"
cat "$RESULTS"
if [ -n "$RELOAD_OUT" ]; then echo "$RELOAD_OUT"; fi
echo "logs: $WORK"
