#!/usr/bin/env bash
# Installs what the real-vs-fake page's browser test needs, if missing (idempotent, quiet), for `make test`:
#   - Debian's chromium (system browser; Playwright drives it via executable_path)
#   - the Python `playwright` package into the repo venv.
# Never runs `playwright install` (that would download browsers). Where chromium cannot be installed
# (no apt-get, or neither root nor sudo) it says why and exits 0: the browser test then skips with
# that reason, unless SSL_BENCH_REQUIRE_BROWSER=1 (CI) makes the missing browser a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else
      echo "browser_setup: not root and no password-less sudo: chromium not installed (browser test will skip)" >&2
      exit 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser_setup: no apt-get (not a Debian machine): chromium not installed (browser test will skip)" >&2
    exit 0
  fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
  "$PY" -m pip install -q playwright
fi
