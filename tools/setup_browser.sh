#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Idempotent set-up for the browser tests (tests/browser): Debian's chromium and npm's playwright-core
# (pinned by tests/browser/package-lock.json). A second run only checks and returns.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi

BROWSER_DIR="$ROOT/tests/browser"
if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ]; then
    # `npm ci` installs exactly the lock file; playwright-core downloads no browser of its own.
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
