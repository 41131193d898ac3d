#!/usr/bin/env bash
# Set up (first run only) and start one node with the example configuration:
# loopback, unprivileged ports, embedded PostgreSQL under ./state. Ctrl-C stops it.
# Another configuration: `bash scripts/serve.sh --config FILE` (or $MTA_CONFIG).
source "$(dirname "$0")/setup.sh"
ensure_debian_packages
ensure_venv ""
echo "serve.sh: the mta command is .venv/bin/mta; \`source .venv/bin/activate\` puts it on PATH" >&2
exec .venv/bin/mta serve --config "${MTA_CONFIG:-config/mta.example.yaml}" "$@"
