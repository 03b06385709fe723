#!/usr/bin/env bash
# TLS harness: new TLS handshakes per second and HTTP/2 requests per second through kingress
# and through nginx, on the same run, with the same certificate and the same echo backends.
# Everything listens on and talks to 127.0.0.1 only. See README.md here.
#
#   benches/load/tls.sh [--duration 10] [--concurrency 32] [--h2-connections 32] [--h2-streams 10]
#                       [--key ecdsa|rsa] [--skip-tls12] [--skip-request] [--port-base 18400]
#
# Per target (kingress, then nginx, test by test): tls-handshakes (TLS 1.3 handshake only,
# TLS 1.2 handshake only, TLS 1.3 handshake + one GET), then h2load over h2. Stops everything
# it started (by PID) on exit. Logs, manifests, certificate and nginx config stay in the work
# folder it prints.
set -euo pipefail
# shellcheck source=benches/load/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DURATION=10
CONCURRENCY=32
H2_CONNECTIONS=32
H2_STREAMS=10
KEY=ecdsa
SKIP_TLS12=0
SKIP_REQUEST=0
PORT_BASE=${BENCH_PORT_BASE:-18400}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift ;;
        --concurrency) CONCURRENCY=$2; shift ;;
        --h2-connections) H2_CONNECTIONS=$2; shift ;;
        --h2-streams) H2_STREAMS=$2; shift ;;
        --key) KEY=$2; shift ;;
        --skip-tls12) SKIP_TLS12=1 ;;
        --skip-request) SKIP_REQUEST=1 ;;
        --port-base) PORT_BASE=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$KEY" in ecdsa|rsa) ;; *) echo "--key is ecdsa or rsa" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

HOST=127.0.0.1
SNI=bench.local
ECHO1_PORT=$((PORT_BASE + 1))
ECHO2_PORT=$((PORT_BASE + 2))
HTTP_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 81))
KINGRESS_TLS_PORT=$((PORT_BASE + 43))
NGINX_TLS_PORT=$((PORT_BASE + 44))

# Processes we start are stopped by PID on exit (PIDS, cleanup: common.sh).
trap cleanup EXIT
trap 'exit 130' INT TERM

require_free_ports "$ECHO1_PORT" "$ECHO2_PORT" "$HTTP_PORT" "$ADMIN_PORT" "$KINGRESS_TLS_PORT" "$NGINX_TLS_PORT"

# --- tools ----------------------------------------------------------------------------
if ! command -v nginx >/dev/null; then log "installing nginx"; apt_install nginx-light; fi
if ! command -v h2load >/dev/null; then log "installing h2load (nghttp2-client)"; apt_install nghttp2-client; fi
command -v curl >/dev/null || { log "installing curl"; apt_install curl; }
# pingora's zlib-ng needs cmake (installed from apt when missing).
bash scripts/bootstrap.sh

log "building (release)"
cargo build --release -p kingress -p kingress-benches --locked
KINGRESS=$ROOT/target/release/kingress
HANDSHAKES=$ROOT/target/release/tls-handshakes

make_work kingress-tls
mkdir -p "$WORK/cert"

# --- certificate: self-signed for bench.local, the same files for both proxies -----------
log "certificate for $SNI ($KEY)"
if command -v openssl >/dev/null; then
    if [ "$KEY" = rsa ]; then newkey=(-newkey rsa:2048); else newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); fi
    openssl req -x509 "${newkey[@]}" -nodes -days 30 -subj "/CN=$SNI" -addext "subjectAltName=DNS:$SNI" \
        -keyout "$WORK/cert/tls.key" -out "$WORK/cert/tls.crt" 2>/dev/null
    openssl x509 -in "$WORK/cert/tls.crt" -noout -subject -ext subjectAltName | tr '\n' ' '
    echo "($(openssl x509 -in "$WORK/cert/tls.crt" -noout -text | grep -m1 'Public Key Algorithm' | sed 's/.*: //'))"
else
    [ "$KEY" = ecdsa ] || { echo "--key rsa needs openssl" >&2; exit 1; }
    "$HANDSHAKES" --gen-cert "$WORK/cert" --sni "$SNI"
fi

# --- backends ---------------------------------------------------------------------------
start_echo_backends

# --- manifests: Service + 2 EndpointSlices, the tls Secret, an Ingress with a tls section ----
write_echo_manifest
{
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: bench-tls, namespace: default}\n'
    printf 'type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n'
    sed 's/^/    /' "$WORK/cert/tls.crt"
    printf '  tls.key: |\n'
    sed 's/^/    /' "$WORK/cert/tls.key"
} >"$MANIFESTS/secret.yaml"
cat >"$MANIFESTS/bench.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: default}
spec:
  ingressClassName: kingress
  tls:
  - hosts: [$SNI]
    secretName: bench-tls
  rules:
  - host: $SNI
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: echo, port: {number: 80}}
EOF

# --- kingress -------------------------------------------------------------------------------
log "starting kingress: https $HOST:$KINGRESS_TLS_PORT (http $HOST:$HTTP_PORT, admin $HOST:$ADMIN_PORT)"
start_kingress --https-listen "$HOST:$KINGRESS_TLS_PORT"

# --- nginx: the same job, ingress-nginx's TLS defaults ------------------------------------
log "starting nginx: https $HOST:$NGINX_TLS_PORT"
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# Same job as kingress here: one host over TLS (same certificate), / to two echo
# endpoints, keepalive upstream, the headers ingress-nginx sets, HSTS. TLS settings are
# ingress-nginx's defaults (protocols, TLS 1.2 ciphers, shared session cache, no tickets).
# worker_processes auto (2 on this machine), as kingress runs one worker thread per core.
$(nginx_conf_main)
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    # 1000 (the default) would close each h2 connection after 1,000 streams, mid-run;
    # kingress has no such limit.
    keepalive_requests 1000000;
    upstream echo {
        server 127.0.0.1:$ECHO1_PORT;
        server 127.0.0.1:$ECHO2_PORT;
        # ingress-nginx's defaults (upstream-keepalive-connections 320, -requests 10000):
        # h2load keeps 32 x 10 streams in flight, so 64 idle connections would churn.
        keepalive 320;
        keepalive_requests 10000;
    }
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    ssl_session_tickets off;
    server {
        # nginx 1.22: "http2" on the listen line (the "http2 on" directive is 1.25.1+).
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        server_name $SNI;
        ssl_certificate $WORK/cert/tls.crt;
        ssl_certificate_key $WORK/cert/tls.key;
        location / {
$(nginx_proxy_to_echo)
            add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
        }
    }
}
EOF
start_nginx

# --- preflight: both answer 200 with the echo's JSON over h2 for bench.local ---------------
declare -A PROXY_PORT=([kingress]=$KINGRESS_TLS_PORT [nginx]=$NGINX_TLS_PORT)
declare -A HEALTHY=()
for target in kingress nginx; do
    port=${PROXY_PORT[$target]}
    url="https://$SNI:$port/"
    resolve=(--resolve "$SNI:$port:$HOST")
    if wait_status 200 "$url" -k "${resolve[@]}"; then
        HEALTHY[$target]=1
    fi
    cmd=(curl -sk --http2 "${resolve[@]}" -w '\n%{http_version} %{http_code}\n' "$url")
    show_cmd "${cmd[@]}"
    out=$("${cmd[@]}" 2>&1 || true)
    echo "$out"
    if [ "$(tail -n1 <<<"$out")" != "2 200" ] || ! grep -q '"name"' <<<"$out"; then
        echo "WARNING: $target did not answer 200 with the echo JSON over HTTP/2 for $SNI" >&2
        unset 'HEALTHY[$target]'
    fi
done
[ -n "${HEALTHY[nginx]:-}${HEALTHY[kingress]:-}" ] || { echo "neither proxy answers; see $WORK" >&2; exit 1; }

# --- measurements ------------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"
# The processes whose CPU counts as the proxy's: kingress, or nginx's workers (the master
# only supervises).
proxy_pids() {
    if [ "$1" = kingress ]; then echo "$KINGRESS_PID"; else pgrep -P "$NGINX_PID"; fi
}
# Anything else busy on the machine skews the figures: show it.
preamble() {
    local others
    others=$(ps -eo comm= | grep -cxE 'cargo|rustc|cc1|ld' || true)
    echo "load average before: $(loadavg); cargo/rustc/cc/ld processes: ${others:-0}"
}
# measure TARGET CMD...: shows CMD, runs it under `time` and prints what it wrote. Sets OUT
# (that output, then a "client CPU:" line) and PROXY_TICKS (TARGET's CPU meanwhile).
measure() {
    local target=$1; shift
    show_cmd "$@"
    local pids p0 p1
    mapfile -t pids < <(proxy_pids "$target")
    p0=$(cpu_ticks "${pids[@]}")
    OUT=$( { TIMEFORMAT='client CPU: %U s user, %S s system'; time "$@"; } 2>&1) || true
    p1=$(cpu_ticks "${pids[@]}")
    echo "$OUT"
    PROXY_TICKS=$((p1 - p0))
}
client_cpu() { awk '/^client CPU:/ {printf "%.2f", $3 + $6}' <<<"$1"; }
per_unit_us() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", t / hz / n * 1e6; else printf "-" }'; }

# run_handshakes TARGET LABEL ARGS... : tls-handshakes against TARGET's HTTPS port.
run_handshakes() {
    local target=$1 label=$2; shift 2
    local port=${PROXY_PORT[$target]}
    log "$label: $target"
    preamble
    local cmd=("$HANDSHAKES" --connect "$HOST:$port" --sni "$SNI" --concurrency "$CONCURRENCY"
        --duration-secs "$DURATION" --warmup-secs 1 "$@")
    measure "$target" "${cmd[@]}"
    local out=$OUT ticks=$PROXY_TICKS
    local res rate all errors p50 p99 cpu
    res=$(grep '^RESULT' <<<"$out" || true)
    if [ -z "$res" ]; then
        printf '%-36s %-8s FAILED (see above)\n' "$label" "$target" >>"$RESULTS"
        return
    fi
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$res"; }
    rate=$(field rate); all=$(field all); errors=$(field errors); p50=$(field p50_ms); p99=$(field p99_ms)
    cpu=$(per_unit_us "$ticks" "$all")
    echo "proxy CPU: $(ticks_secs "$ticks") s for $all handshakes (warm-up included): ${cpu} us each"
    printf '%-36s %-8s %9s /s  p50 %6s ms  p99 %6s ms  errors %-5s proxy CPU %6s us/handshake  client CPU %s s\n' \
        "$label" "$target" "$rate" "$p50" "$p99" "$errors" "$cpu" "$(client_cpu "$out")" >>"$RESULTS"
}

# run_h2load TARGET : h2load over TLS + h2, :authority and SNI bench.local.
run_h2load() {
    local target=$1
    local port=${PROXY_PORT[$target]}
    local label="HTTP/2 requests (h2load)"
    log "$label: $target"
    preamble
    local cmd=(h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -t 1 -D "$DURATION" --warm-up-time 1
        --connect-to "$HOST:$port" "https://$SNI:$port/")
    measure "$target" "${cmd[@]}"
    local out=$OUT ticks=$PROXY_TICKS
    local rate done failed errored timeout s2xx proto mean max cpu
    rate=$(awk '/^finished in/ {print $4}' <<<"$out")
    done=$(awk '/^requests:/ {print $6}' <<<"$out")
    failed=$(awk '/^requests:/ {print $10}' <<<"$out")
    errored=$(awk '/^requests:/ {print $12}' <<<"$out")
    timeout=$(awk '/^requests:/ {print $14}' <<<"$out")
    s2xx=$(awk '/^status codes:/ {print $3}' <<<"$out")
    proto=$(awk -F': ' '/^Application protocol/ {print $2}' <<<"$out")
    mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
    max=$(awk '/^time for request:/ {print $5}' <<<"$out")
    if [ -z "$rate" ]; then
        printf '%-36s %-8s FAILED (see above)\n' "$label" "$target" >>"$RESULTS"
        return
    fi
    # CPU covers the warm-up second too; h2load's counts do not: scale by the measured time.
    cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="${done:-0}" -v d="$DURATION" \
        'BEGIN { if (n > 0) printf "%.1f", t / hz * d / (d + 1) / n * 1e6; else printf "-" }')
    echo "proxy CPU: $(ticks_secs "$ticks") s over $((DURATION + 1)) s (warm-up included): ~${cpu} us per request"
    printf '%-36s %-8s %9s /s  mean %7s  max %8s  2xx %s of %s done; failed %s errored %s timeout %s; %s; proxy CPU ~%s us/request  client CPU %s s\n' \
        "$label" "$target" "$rate" "$mean" "$max" "${s2xx:-?}" "${done:-?}" "${failed:-?}" "${errored:-?}" \
        "${timeout:-?}" "${proto:-?}" "$cpu" "$(client_cpu "$out")" >>"$RESULTS"
}

TARGETS=()
for t in kingress nginx; do [ -n "${HEALTHY[$t]:-}" ] && TARGETS+=("$t"); done

for t in "${TARGETS[@]}"; do run_handshakes "$t" "TLS 1.3 handshakes (handshake only)"; done
if [ "$SKIP_TLS12" = 0 ]; then
    for t in "${TARGETS[@]}"; do run_handshakes "$t" "TLS 1.2 handshakes (handshake only)" --tls12; done
fi
if [ "$SKIP_REQUEST" = 0 ]; then
    for t in "${TARGETS[@]}"; do run_handshakes "$t" "TLS 1.3 handshake + GET (conn close)" --mode request; done
fi
for t in "${TARGETS[@]}"; do run_h2load "$t"; done

log "summary ($(nproc) cores, $KEY certificate, $CONCURRENCY handshake loops, h2load -c$H2_CONNECTIONS -m$H2_STREAMS, ${DURATION}s each; load average now $(loadavg))"
cat "$RESULTS"
echo "logs: $WORK"
