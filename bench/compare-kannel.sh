#!/usr/bin/env bash
# The same end-to-end load through Herald and through Kannel, alternating (A B A B A B), on this
# machine, against the same provider stub, with durable stores and delivery reports on both
# sides. Prints each system's median rates and the ratio. Options: see bench/harness.py.
#   bench/compare-kannel.sh [--messages 20000] [--rounds 3] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v bearerbox >/dev/null; then
    echo "installing Kannel (Debian package kannel)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y kannel >/dev/null
fi
if ! command -v oha >/dev/null; then
    echo "installing the oha load generator" >&2
    cargo install oha --version 1.16.0 --locked >&2
fi
cargo build --release >&2
exec python3 bench/harness.py compare-kannel --herald target/release/herald "$@"
