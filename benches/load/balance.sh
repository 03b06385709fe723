#!/usr/bin/env bash
# Balancing under a slow endpoint: three echo backends (fast-1, fast-2: 2 ms; slow: 20 ms)
# behind kingress, with load-balance round_robin and then ewma; prints, for each, the share
# of requests every backend got and the client's p50/p90/p99/max latency. See README.md here.
#
#   benches/load/balance.sh [--concurrency 32] [--duration-secs 15] [--warmup-secs 3]
#                           [--fast-delay-ms 2] [--slow-delay-ms 20] [--kingress PATH]
#
# The arguments go to target/release/balance-load (source: balance_load.rs), which starts
# and stops (by PID) every process it uses. Everything on 127.0.0.1, on free ports.
set -euo pipefail

case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

# pingora's zlib-ng needs cmake (installed from apt when missing).
bash scripts/bootstrap.sh

echo "== building (release)"
cargo build --release -p kingress -p kingress-benches --locked

echo "== $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "\$ target/release/balance-load $*"
exec "$ROOT/target/release/balance-load" "$@"
