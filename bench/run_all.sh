#!/usr/bin/env bash
# Every benchmark at its default size, then a py-spy profile of the node, and one
# Markdown summary (bench/out/summary-<stamp>.md). Options go to bench/all.py:
# --workers N (mta serve --workers), --quick (small sizes), --no-profile, --only a,b.
# On a fresh clone it first sets up ./.venv the way the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  bash scripts/test.sh tests/test_harness.py
fi
exec .venv/bin/python bench/all.py "$@"
