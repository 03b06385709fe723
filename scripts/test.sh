#!/usr/bin/env bash
# The test suite: every crate's unit tests and the end-to-end tests over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec cargo test --workspace --locked "$@"
