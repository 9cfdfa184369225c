#!/usr/bin/env bash
# Runs ../shared/bench/peers.sh (nginx, HAProxy, Caddy side by side on loopback) with ficus as
# the gateway on the plain route of loadtest/bench.yaml.
# Usage: loadtest/peers.sh [duration_s=8] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin ficus >&2
PEERS=${PEERS:-../shared/bench/peers.sh}
GATEWAY_CMD="$PWD/target/release/ficus run --config $PWD/loadtest/bench.yaml" GATEWAY_PORT=18084 \
  bash "$PEERS" "${1:-8}" "${2:-64}"
