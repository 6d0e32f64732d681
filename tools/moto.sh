#!/usr/bin/env bash
# Installs moto's standalone server (a local implementation of AWS APIs, SNS and IAM among them)
# into .tools/moto, a git-ignored virtualenv, for the SNS adapter's tests. Safe to run again and
# from several processes at once. Prints the path of `moto_server`.
#
# PYTHON picks the interpreter (default: python3; moto needs 3.9 or later).
set -euo pipefail

# The version the tests were written against; its behaviour (built-in opted-out numbers,
# recorder, IAM checks) is what they assert.
MOTO_VERSION=5.2.5

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/moto"
server="$venv/bin/moto_server"

mkdir -p "$root/.tools"
exec 9>"$root/.tools/moto.lock"
flock 9

installed() {
    [ -x "$server" ] && "$venv/bin/python" - "$MOTO_VERSION" <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version("moto") == sys.argv[1] else 1)
PY
}

if ! installed 2>/dev/null; then
    rm -rf "$venv"
    python="${PYTHON:-python3}"
    "$python" -m venv "$venv" || {
        echo "moto.sh: $python cannot create a virtualenv in $venv" >&2
        exit 1
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2 || {
        echo "moto.sh: pip could not install moto[server]==$MOTO_VERSION" >&2
        exit 1
    }
    installed || {
        echo "moto.sh: moto $MOTO_VERSION is not importable after installing it" >&2
        exit 1
    }
fi
echo "$server"
