#!/usr/bin/env bash
# The long fuzzing run (issue 13): at least 1,000,000 inputs per target of
# tests/fuzz/targets.py under atheris (coverage-guided). Extra arguments go to
# scripts/fuzz.py (--count N, --seconds S, --only NAME ...). Uses ./.venv (set up by
# scripts/test.sh) and installs the `fuzz` extra (atheris) into it when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    bash scripts/test.sh --collect-only -q tests/fuzz >/dev/null
fi
if ! .venv/bin/python -c "import atheris" 2>/dev/null; then
    .venv/bin/pip install --quiet -e '.[fuzz]'
fi
exec .venv/bin/python scripts/fuzz.py "$@"
