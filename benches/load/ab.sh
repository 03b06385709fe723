#!/usr/bin/env bash
# A/B of two kingress binaries (or one): one echo backend, kingress serving one Ingress,
# wrk against kingress; prints requests/s and kingress's CPU time per request.
# Alternate the binaries over several runs: this 2-core VM varies by about 20% run to run.
#
#   benches/load/ab.sh BINARY [BINARY ...]     e.g. ab.sh /tmp/kingress-old target/release/kingress
#
# Everything on 127.0.0.1 (ports 19001, 19080, 19081); stops what it started, by PID.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,8p' "$0"; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
WORK=$(mktemp -d)
mkdir "$WORK/m"
cat >"$WORK/m/a.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: echo}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 19001}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: b}
spec:
  ingressClassName: kingress
  rules: [{host: bench.local, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}}]
YAML
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
for BIN in "$@"; do
    "$BIN" echo --listen 127.0.0.1:19001 --name e1 >/dev/null 2>&1 & E=$!
    "$BIN" run --manifests "$WORK/m" --http-listen 127.0.0.1:19080 --admin-listen 127.0.0.1:19081 >/dev/null 2>&1 & K=$!
    PIDS=("$E" "$K")
    for _ in $(seq 100); do curl -sf http://127.0.0.1:19081/readyz >/dev/null && break; sleep 0.05; done
    t0=$(awk '{print $14+$15}' "/proc/$K/stat")
    wrk -t2 -c64 -d8s -H 'Host: bench.local' http://127.0.0.1:19080/ >"$WORK/wrk.txt"
    t1=$(awk '{print $14+$15}' "/proc/$K/stat")
    req=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
    rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
    echo "$BIN: $rps req/s, $(python3 -c "print(round(($t1-$t0)*1e6/100/$req,1))") us CPU per request"
    kill "$K" "$E"; wait "$K" "$E" 2>/dev/null || true
done
