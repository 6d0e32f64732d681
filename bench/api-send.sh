#!/usr/bin/env bash
# POST /v1/messages on a fresh `herald serve` (SQLite): at a fixed open-loop rate with latency
# corrected for coordinated omission, then at saturation. Options: see bench/harness.py.
#   bench/api-send.sh [--rate 2000] [--duration 30s] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v oha >/dev/null; then
    echo "installing the oha load generator" >&2
    cargo install oha --version 1.16.0 --locked >&2
fi
cargo build --release >&2
exec python3 bench/harness.py api-send --herald target/release/herald "$@"
