#!/usr/bin/env bash
# The whole test suite, as `make test` and `.ci/run` run it (after tools/setup_env.sh).
# Every step must pass; nothing here skips or hides a failure. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
tools/setup_browser.sh  # chromium + playwright-core for tests/comfy/test_browser.py (idempotent)
.venv/bin/pytest tests "$@"
# Suites that need their own set-up (the headless-browser tests of issue 4) add their commands here,
# each after the set-up script it needs, e.g.:  tools/setup_browser.sh && <browser test command>
