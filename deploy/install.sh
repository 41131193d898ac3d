#!/usr/bin/env bash
# Install one mta node on a fresh Debian (12+) host, from a checkout of this repository.
#
#   sudo deploy/install.sh --hostname mx1.example.com [--domain example.com ...]
#        [--database-url postgresql+asyncpg://mta:PASS@db.example.com/mta]
#        [--tls-cert /etc/letsencrypt/live/mx1/fullchain.pem --tls-key .../privkey.pem]
#        [--srs-domain srs.example.com] [--no-start]
#
# What it does (each step is skipped when already done, so it can be re-run):
#   1. Debian packages: python3-venv, ca-certificates, and the PostgreSQL server
#      binaries when no --database-url is given (the node then runs an embedded cluster
#      under /var/lib/mta/postgres).
#   2. System user and group `mta` (no login shell, home /var/lib/mta).
#   3. /opt/mta/.venv with this checkout installed (pip; needs PyPI or a mirror).
#   4. /etc/mta/mta.yaml from config/mta.example.yaml, every comment kept, with production
#      values: MX on 0.0.0.0:25, submission on 0.0.0.0:465 (only with a certificate),
#      state_dir /var/lib/mta, node.hostname and srs.domain. An existing file is kept.
#   5. /etc/mta/secrets.env (mode 0640, group mta): MTA_SECRET_KEY and MTA_SRS_SECRETS
#      generated once, MTA_DATABASE_URL when --database-url is given.
#   6. /etc/systemd/system/mta.service from systemd/mta.service; with an external
#      database, `mta db upgrade` before the first start; then enable --now.
#   7. Prints the DNS records to publish (node records, and per --domain the routing,
#      MTA-STS and TLS-RPT records, via `mta dns`).
#
# Options for trying it without touching this machine:
#   --dry-run     print every command and file instead of running or writing it
#   --prefix DIR  install under DIR (DIR/etc/mta, DIR/opt/mta, ...): no apt, no user,
#                 no chown, no systemctl; --no-venv skips the venv (the DNS step then
#                 uses the checkout's .venv when there is one)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="" DRY_RUN=0 NO_VENV=0 START=1
HOSTNAME_="" SRS_DOMAIN="" DB_URL="" TLS_CERT="" TLS_KEY=""
DOMAINS=()

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --hostname) HOSTNAME_="$2"; shift 2 ;;
        --domain) DOMAINS+=("$2"); shift 2 ;;
        --database-url) DB_URL="$2"; shift 2 ;;
        --tls-cert) TLS_CERT="$2"; shift 2 ;;
        --tls-key) TLS_KEY="$2"; shift 2 ;;
        --srs-domain) SRS_DOMAIN="$2"; shift 2 ;;
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
if { [ -n "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; } || { [ -z "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; }; then
    echo "install.sh: --tls-cert and --tls-key go together" >&2; exit 2
fi
SYSTEM=1  # act on the real system (users, packages, services)
[ -z "$PREFIX" ] || SYSTEM=0
if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --prefix DIR / --dry-run)" >&2; exit 2
fi

ETC="$PREFIX/etc/mta" OPT="$PREFIX/opt/mta" STATE="$PREFIX/var/lib/mta"
UNIT_DIR="$PREFIX/etc/systemd/system"
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
        # The Debian package starts a cluster of its own; the node runs its own instead.
        [ -n "$DB_URL" ] || run systemctl disable --now postgresql.service || true
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
        "listeners.mx.address=0.0.0.0" "listeners.mx.port=25"
        "listeners.submission.address=0.0.0.0" "listeners.submission.port=465"
        "listeners.submission_starttls.address=0.0.0.0" "listeners.submission_starttls.port=587"
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

# --- 6. service ------------------------------------------------------------------------------
say "systemd unit $UNIT_DIR/mta.service"
run install -d "$UNIT_DIR"
run install -m 0644 "$SRC/systemd/mta.service" "$UNIT_DIR/mta.service"
if [ "$SYSTEM" = 1 ]; then
    run systemctl daemon-reload
    if [ -n "$DB_URL" ]; then
        # Nodes also migrate at start-up (serialised by an advisory lock); doing it here
        # surfaces a wrong URL or missing privileges before the service starts.
        run runuser -u mta -- env "MTA_DATABASE_URL=$DB_URL" "$MTA" --config "$ETC/mta.yaml" db upgrade
    fi
    if [ "$START" = 1 ]; then
        run systemctl enable --now mta.service
    else
        run systemctl enable mta.service
    fi
fi

# --- 7. DNS ----------------------------------------------------------------------------------
say "DNS records to publish"
cat <<EOF
    # This node (one set per node; the MX of every routing domain points at them):
    $HOSTNAME_.            A/AAAA   <this node's public addresses>
    <its addresses>        PTR      $HOSTNAME_.   (ask your provider; receivers check it)
    _spf.$HOSTNAME_.       TXT      "v=spf1 ip4:<node IPv4s> ip6:<node IPv6s> -all"
    # Mail for SRS-rewritten senders comes back here:
    $SRS_DOMAIN.           MX 10    $HOSTNAME_.
EOF
for d in ${DOMAINS[@]+"${DOMAINS[@]}"}; do
    cat <<EOF
    # Routing domain $d (or enable routing: mta apply routing.yaml):
    $d.                    MX 10    $HOSTNAME_.
    $d.                    TXT      "v=spf1 include:_spf.$HOSTNAME_ ~all"
    mta-sts.$d.            CNAME    <the HTTPS front end of the HTTP listener>
EOF
    if [ -x "$MTA" ] && [ "$DRY_RUN" = 0 ]; then
        "$MTA" --config "$ETC/mta.yaml" dns "$d" --mta-sts --no-check | sed 's/^/    /'
    else
        echo "    \$ mta dns $d --mta-sts      # the _mta-sts and _smtp._tls TXT records"
    fi
done
cat <<EOF
    # Sending domains: onboard each, then publish what it prints and check it live:
    #   mta domains onboard example.com --sending && mta dns example.com
EOF
[ "$DRY_RUN" = 0 ] || echo "dry run: nothing was changed"
