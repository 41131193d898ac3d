#!/usr/bin/env bash
# Set up (first run only) and start one node with the example configuration:
# loopback, unprivileged ports, embedded PostgreSQL under ./state. Ctrl-C stops it.
source "$(dirname "$0")/setup.sh"
ensure_debian_packages
ensure_venv ""
exec .venv/bin/mta serve --config "${MTA_CONFIG:-config/mta.example.yaml}" "$@"
