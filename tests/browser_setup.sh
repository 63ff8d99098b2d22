#!/usr/bin/env bash
# Installs what the Turing-test browser test needs, if missing (idempotent, quiet):
#   - Debian's chromium (system browser; Playwright drives it via executable_path)
#   - the Python `playwright` package into the repo venv.
# Never runs `playwright install` (that would download browsers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
  "$PY" -m pip install -q playwright
fi
