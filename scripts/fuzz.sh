#!/usr/bin/env bash
# The long fuzzing run (issue 13): at least 1,000,000 random inputs per target of
# tests/fuzz/test_fuzz.py. Extra arguments go to scripts/fuzz.py (--count, --seconds,
# --only NAME ...). Uses ./.venv (set up by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    bash scripts/test.sh --collect-only -q tests/fuzz >/dev/null
fi
exec .venv/bin/python scripts/fuzz.py "$@"
