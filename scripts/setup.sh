# Shared set-up for scripts/serve.sh and scripts/test.sh (sourced, not run).
# Installs only what is missing: Debian packages through apt-get, Python packages
# into ./.venv through pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

have_pg_server() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

ensure_debian_packages() {
    local missing=()
    have_pg_server || missing+=(postgresql)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

ensure_venv() {
    local extras="$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    local stamp=".venv/.installed-$extras"
    # The package with any extras (e.g. the test set-up's) is enough to serve.
    if [ -z "$extras" ] && [ ! -f "$stamp" ]; then
        local other
        for other in .venv/.installed-*; do
            if [ -f "$other" ] && [ ! pyproject.toml -nt "$other" ]; then stamp="$other"; fi
        done
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e ".$extras"
        touch "$stamp"
    fi
}
