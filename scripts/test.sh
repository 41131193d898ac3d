#!/usr/bin/env bash
# Set up (what is missing) and run the whole default test suite. Extra arguments go
# to pytest (e.g. a path, or -m slow for the long soak runs).
source "$(dirname "$0")/setup.sh"
# Real peers used by the tests: Mail::DKIM (independent DKIM/ARC verifier), curl (an
# SMTPS client), swaks, Postfix (a private instance as a real SMTP peer);
# systemd-analyze and shellcheck check systemd/ and deploy/; unbound (a validating
# resolver in front of the test DNS server, for DANE)
ensure_debian_packages libmail-dkim-perl curl swaks systemd shellcheck postfix unbound
ensure_venv "[test]"
exec .venv/bin/pytest -q "$@"
