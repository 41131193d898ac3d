#!/usr/bin/env bash
# Install one mta node on a fresh Debian (12+) host, from a checkout of this repository.
#
#   sudo deploy/install.sh --hostname mx1.example.com --public-url https://mail.example.com
#        [--domain example.com ...]
#        [--database-url postgresql+asyncpg://mta:PASS@db.example.com/mta]
#        [--tls-cert /etc/letsencrypt/live/mx1/fullchain.pem --tls-key .../privkey.pem]
#        [--srs-domain srs.example.com] [--no-start]
#
# What it does (each step is skipped when already done, so it can be re-run):
#   1. Debian packages: python3-venv, ca-certificates, and the PostgreSQL server
#      binaries when no --database-url is given (the node then runs an embedded cluster
#      under /var/lib/mta/postgres, and Debian's own default cluster is set to start
#      manually and stopped; with --database-url no local cluster is touched).
#   2. System user and group `mta` (no login shell, home /var/lib/mta).
#   3. /opt/mta/.venv with this checkout installed (pip; needs PyPI or a mirror).
#   4. /etc/mta/mta.yaml from config/mta.example.yaml, every comment kept, with production
#      values: MX on port 25 of every address, IPv4 and IPv6 (`::`), submission on 465
#      (only with a certificate), state_dir /var/lib/mta, node.hostname,
#      srs.domain, routing.verification_base_url (--public-url, default
#      https://HOSTNAME). An existing file is kept.
#   5. /etc/mta/secrets.env (mode 0640, group mta): MTA_SECRET_KEY and MTA_SRS_SECRETS
#      generated once, MTA_DATABASE_URL when --database-url is given.
#   6. /usr/local/bin/mta: the CLI with /etc/mta/mta.yaml and secrets.env (root and
#      group mta can use it).
#   7. /etc/systemd/system/mta.service from systemd/mta.service; with an external
#      database, `mta db upgrade` before the first start; then enable --now.
#   8. Prints every DNS record to publish: the node's own, then per --domain the routing
#      MX, SPF, MTA-STS and TLS-RPT records, and the SRS domain's MX and SPF with the
#      forwarding DKIM key (`mta dns DOMAIN --routing`, `mta dns SRS --forwarding`).
#
# Options for trying it without touching this machine:
#   --dry-run     print every command and file instead of running or writing it
#   --prefix DIR  install under DIR (DIR/etc/mta, DIR/opt/mta, DIR/usr/local/bin, ...):
#                 no apt, no user, no chown, no systemctl; --no-venv skips the venv (the
#                 CLI is then the checkout's .venv/bin/mta)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="" DRY_RUN=0 NO_VENV=0 START=1
HOSTNAME_="" SRS_DOMAIN="" DB_URL="" TLS_CERT="" TLS_KEY="" PUBLIC_URL=""
DOMAINS=()

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --hostname) HOSTNAME_="$2"; shift 2 ;;
        --domain) DOMAINS+=("$2"); shift 2 ;;
        --database-url) DB_URL="$2"; shift 2 ;;
        --tls-cert) TLS_CERT="$2"; shift 2 ;;
        --tls-key) TLS_KEY="$2"; shift 2 ;;
        --srs-domain) SRS_DOMAIN="$2"; shift 2 ;;
        --public-url) PUBLIC_URL="${2%/}"; shift 2 ;;
        --prefix) PREFIX="$(realpath -m "$2")"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-venv) NO_VENV=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

[ -n "$HOSTNAME_" ] || HOSTNAME_="$(hostname -f 2>/dev/null || hostname)"
[ -n "$SRS_DOMAIN" ] || SRS_DOMAIN="$HOSTNAME_"
[ -n "$PUBLIC_URL" ] || PUBLIC_URL="https://$HOSTNAME_"
case "$PUBLIC_URL" in
    http://*|https://*) ;;
    *) echo "install.sh: --public-url must start with https:// (or http://)" >&2; exit 2 ;;
esac
if { [ -n "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; } || { [ -z "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; }; then
    echo "install.sh: --tls-cert and --tls-key go together" >&2; exit 2
fi
SYSTEM=1  # act on the real system (users, packages, services)
[ -z "$PREFIX" ] || SYSTEM=0
if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --prefix DIR / --dry-run)" >&2; exit 2
fi

ETC="$PREFIX/etc/mta" OPT="$PREFIX/opt/mta" STATE="$PREFIX/var/lib/mta"
UNIT_DIR="$PREFIX/etc/systemd/system" BIN_DIR="$PREFIX/usr/local/bin"
MTA="$OPT/.venv/bin/mta"

say() { printf '==> %s\n' "$*"; }
run() {  # every command that changes something goes through here
    if [ "$DRY_RUN" = 1 ]; then printf '    $ %s\n' "$*"; else "$@"; fi
}
write_file() {  # write_file PATH MODE < content
    local path="$1" mode="$2" content
    content="$(cat)"
    if [ "$DRY_RUN" = 1 ]; then
        printf '    would write %s (mode %s):\n' "$path" "$mode"
        printf '%s\n' "$content" | sed 's/^/      | /'
        return
    fi
    install -d "$(dirname "$path")"
    ( umask 077; printf '%s\n' "$content" > "$path" )
    chmod "$mode" "$path"
}

# --- 1. packages -------------------------------------------------------------------------
if [ "$SYSTEM" = 1 ]; then
    say "Debian packages"
    pkgs=(python3-venv ca-certificates)
    [ -n "$DB_URL" ] || pkgs+=(postgresql)
    missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if [ -z "$DB_URL" ]; then
        # The Debian package creates and starts a default cluster ("main"); the node
        # runs its own, so that one is stopped and set to start only by hand. Other
        # clusters, and everything when an external database is used, are left alone.
        say "Debian's default PostgreSQL cluster: stopped, start=manual (the node runs its own)"
        found=0
        for conf in /etc/postgresql/*/main/start.conf; do
            [ -e "$conf" ] || continue
            found=1
            version="$(basename "$(dirname "$(dirname "$conf")")")"
            if ! grep -qx 'manual' "$conf"; then
                if [ "$DRY_RUN" = 1 ]; then
                    printf '    would write %s: manual\n' "$conf"
                else
                    echo manual > "$conf"
                fi
            fi
            run systemctl stop "postgresql@$version-main.service"
        done
        [ "$found" = 1 ] || echo "    (no default cluster yet: the one apt creates is handled on the next run)"
    fi

    # --- 2. user ---------------------------------------------------------------------------
    say "system user mta"
    if ! id mta >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir /var/lib/mta --no-create-home \
            --shell /usr/sbin/nologin --comment "mta mail transfer agent" mta
    fi
fi

# --- 3. directories and venv -----------------------------------------------------------------
say "directories and virtualenv under $OPT"
run install -d -m 0755 "$OPT" "$ETC"
run install -d -m 0700 "$STATE"
[ "$SYSTEM" = 0 ] || run chown mta:mta "$STATE"
run install -m 0644 "$SRC/README.md" "$OPT/README.md"
if [ "$NO_VENV" = 0 ]; then
    [ -x "$OPT/.venv/bin/python" ] || run python3 -m venv "$OPT/.venv"
    run "$OPT/.venv/bin/pip" install -q --upgrade pip
    run "$OPT/.venv/bin/pip" install -q "$SRC"
elif [ ! -x "$MTA" ]; then
    MTA="$SRC/.venv/bin/mta"  # --no-venv: use the checkout's, for the checks below
fi

# --- 4. configuration ------------------------------------------------------------------------
# Set values by key path in the commented example, keeping every comment and the layout.
edit_yaml() {  # edit_yaml SRC DEST key.path=value ...
    python3 - "$@" <<'PY'
import re, sys
src, dest, *pairs = sys.argv[1:]
want = dict(p.split("=", 1) for p in pairs)
out, stack = [], []
for line in open(src, encoding="utf-8").read().splitlines():
    m = re.match(r"^( *)([A-Za-z_]+):(\s*)(.*)$", line)
    if m and not line.lstrip().startswith("#"):
        indent, key, space, rest = len(m.group(1)), m.group(2), m.group(3), m.group(4)
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        path = ".".join(k for _, k in stack)
        if path in want:
            comment = re.search(r"\s+#.*$", rest)
            value = want.pop(path)
            line = f"{m.group(1)}{key}: {value}" + (
                f"  {comment.group(0).strip()}" if comment and "example" not in comment.group(0) else "")
    out.append(line)
if want:
    sys.exit(f"keys not found in {src}: {', '.join(want)}")
open(dest, "w", encoding="utf-8").write("\n".join(out) + "\n")
PY
}

say "configuration $ETC/mta.yaml"
if [ -e "$ETC/mta.yaml" ] && [ "$DRY_RUN" = 0 ]; then
    echo "    kept the existing $ETC/mta.yaml"
else
    settings=(
        "node.hostname=$HOSTNAME_" "state_dir=/var/lib/mta" "srs.domain=$SRS_DOMAIN"
        "listeners.mx.address='::'" "listeners.mx.port=25"
        "listeners.submission.address='::'" "listeners.submission.port=465"
        "listeners.submission_starttls.address='::'" "listeners.submission_starttls.port=587"
        "routing.verification_base_url=$PUBLIC_URL"
        "logging.format=json"
    )
    if [ -n "$TLS_CERT" ]; then
        for l in mx submission submission_starttls; do
            settings+=("listeners.$l.tls_cert=$TLS_CERT" "listeners.$l.tls_key=$TLS_KEY")
        done
    else
        # Implicit TLS cannot run without a certificate: submission waits for one.
        settings+=("listeners.submission.enabled=false")
    fi
    tmp="$(mktemp)"
    edit_yaml "$SRC/config/mta.example.yaml" "$tmp" "${settings[@]}"
    write_file "$ETC/mta.yaml" 0640 < "$tmp"
    rm -f "$tmp"
fi

say "secrets $ETC/secrets.env"
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
if [ -e "$ETC/secrets.env" ] && [ "$DRY_RUN" = 0 ]; then
    echo "    kept the existing $ETC/secrets.env"
    if [ -n "$DB_URL" ] && ! grep -q '^MTA_DATABASE_URL=' "$ETC/secrets.env"; then
        printf 'MTA_DATABASE_URL=%s\n' "$DB_URL" >> "$ETC/secrets.env"
    fi
else
    {
        echo "# Read by systemd (EnvironmentFile) before the config file; keep it private."
        echo "# Encrypts DKIM private keys at rest: the same value on every node, never lost."
        echo "MTA_SECRET_KEY=$(secret)"
        echo "# SRS secrets (comma separated; the first signs). Same value on every node."
        echo "MTA_SRS_SECRETS=$(secret)"
        if [ -n "$DB_URL" ]; then
            echo "# External PostgreSQL shared by every node (database.url)."
            echo "MTA_DATABASE_URL=$DB_URL"
        fi
    } | write_file "$ETC/secrets.env" 0640
fi
[ "$SYSTEM" = 0 ] || run chgrp mta "$ETC/mta.yaml" "$ETC/secrets.env"

if [ "$DRY_RUN" = 0 ] && [ -x "$MTA" ]; then
    "$MTA" config check "$ETC/mta.yaml"
fi

# --- 6. the mta command ---------------------------------------------------------------------
# `mta ...` for the operator: the node's configuration, and its secrets (the database URL,
# the key that decrypts DKIM keys) read from secrets.env, which only root and group mta
# may read. Paths are the installed ones (under --prefix: inside the prefix).
say "command $BIN_DIR/mta"
write_file "$BIN_DIR/mta" 0755 <<EOF
#!/bin/sh
# The mta CLI with this node's configuration and secrets (written by deploy/install.sh).
if [ ! -r "$ETC/secrets.env" ]; then
    echo "mta: cannot read $ETC/secrets.env (run it as root or as a member of group mta)" >&2
    exit 1
fi
set -a
# shellcheck source=/dev/null
. "$ETC/secrets.env"
set +a
MTA_CONFIG="$ETC/mta.yaml" exec "$MTA" "\$@"
EOF
CLI="$BIN_DIR/mta"

# --- 7. service ------------------------------------------------------------------------------
say "systemd unit $UNIT_DIR/mta.service"
run install -d "$UNIT_DIR"
run install -m 0644 "$SRC/systemd/mta.service" "$UNIT_DIR/mta.service"
if [ "$SYSTEM" = 1 ]; then
    run systemctl daemon-reload
    if [ -n "$DB_URL" ]; then
        # Nodes also migrate at start-up (serialised by an advisory lock); doing it here
        # surfaces a wrong URL or missing privileges before the service starts.
        run runuser -u mta -- "$CLI" db upgrade
    fi
    if [ "$START" = 1 ]; then
        run systemctl enable --now mta.service
    else
        run systemctl enable mta.service
    fi
fi

# --- 8. DNS ----------------------------------------------------------------------------------
# What `mta dns` prints, wherever it can: the same code the admin API uses.
dns() {  # dns ARGS...: the records `mta dns ARGS --no-check` prints, or that command
    if [ "$DRY_RUN" = 0 ] && [ -x "$MTA" ]; then
        "$CLI" dns "$@" --no-check | sed 's/^/    /' || echo "    (failed: mta dns $*)"
    else
        echo "    \$ mta dns $*"
    fi
}
say "DNS records to publish"
cat <<EOF
    # This node (one set per node; every MX record below points at the nodes):
    $HOSTNAME_.            A/AAAA   <this node's public IPv4 and IPv6 addresses>
    <its addresses>        PTR      $HOSTNAME_.   (ask your provider; receivers check it)
    _spf.$HOSTNAME_.       TXT      "v=spf1 ip4:<node IPv4s> ip6:<node IPv6s> -all"
    # The SRS domain (envelope sender of forwarded mail: MX for its bounces, SPF) and
    # the forwarding DKIM key (generated now if this is the first time):
EOF
if [ "$SYSTEM" = 1 ] || [ -n "$DB_URL" ]; then
    dns "$SRS_DOMAIN" --forwarding
else
    # Under --prefix the embedded cluster's state_dir is not inside the prefix.
    echo "    \$ mta dns $SRS_DOMAIN --forwarding"
fi
for d in ${DOMAINS[@]+"${DOMAINS[@]}"}; do
    echo "    # Routing domain $d (MX, SPF, then MTA-STS and TLS-RPT):"
    dns "$d" --routing
    echo "    mta-sts.$d   CNAME   <the HTTPS front end of the HTTP listener>"
done
cat <<EOF
    # Sending domains: onboard each, then publish what it prints and check it live:
    #   mta domains onboard example.com --sending && mta dns example.com
EOF
[ "$DRY_RUN" = 0 ] || echo "dry run: nothing was changed"
