#!/usr/bin/env bash
# The main job: build kingress and run the demo (the gateway plus echo backends from
# examples/quickstart). Extra arguments go to `kingress demo` (e.g. --http-listen).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec cargo run --release --locked -p kingress -- demo "$@"
