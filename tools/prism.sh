#!/usr/bin/env bash
# Installs Stoplight Prism (the OpenAPI mock server Herald's Twilio contract tests run against)
# into the project-local, git-ignored .tools/prism, once, and prints the path of its entry
# script, which the tests start with `node` directly so the process they stop is the server.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.tools/prism"
entry="$prefix/node_modules/@stoplight/prism-cli/dist/index.js"
version="5.16.0"
if [ ! -f "$entry" ] || [ "$(cat "$prefix/.version" 2>/dev/null)" != "$version" ]; then
    command -v npm >/dev/null || { echo "npm is needed to install Prism (Debian: apt-get install -y nodejs npm)" >&2; exit 1; }
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --prefix "$prefix" "@stoplight/prism-cli@$version" >&2
    echo "$version" > "$prefix/.version"
fi
[ -f "$entry" ] || { echo "Prism did not install: $entry is missing" >&2; exit 1; }
echo "$entry"
