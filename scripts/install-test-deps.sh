#!/usr/bin/env bash
# Installs the external programs that pgkeep's integration tests run against,
# into $REPO/.tools (git-ignored), so a fresh clone on a fresh machine (a
# developer's or CI's) gets them from the package registries alone.
#
# Idempotent: each component checks a stamp first, so a second run takes well
# under a second. One function per component; main() at the bottom calls them.
#
# Components:
#   moto  - moto's S3-compatible server (`moto_server`) in a Python venv at
#           .tools/venv; used by the `pgkeep-testkit` crate (S3Server).
#
# Environment:
#   PGKEEP_PYTHON  - Python interpreter to build the venv from (default: the
#                    first of python3, python, /usr/bin/python3 that is >= 3.9).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
VENV="$TOOLS/venv"
MOTO_VERSION="5.2.5"
# Quiet and non-interactive: pip's version nag and its warning about running
# as root (needless here: a private venv or --target dir) are noise in CI
# logs. Set through the environment, which pips too old to know an option
# ignore, rather than as flags, which they would reject.
PIP_FLAGS=(--quiet)
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

say() { printf '[install-test-deps] %s\n' "$*"; }
die() { printf '[install-test-deps] error: %s\n' "$*" >&2; exit 1; }

# Serialise concurrent runs (e.g. two CI steps or two terminals): both would
# otherwise write into the same venv at once.
take_lock() {
    mkdir -p "$TOOLS"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$TOOLS/.install.lock"
        flock 9
    fi
}

# Prints the paths of the Pythons >= 3.9 (moto 5.2.5's minimum) found, one
# per line, best first; nothing if there is none.
python_candidates() {
    local c
    for c in ${PGKEEP_PYTHON:-} python3 python /usr/bin/python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; then
            command -v "$c"
        fi
    done
}

# Creates $VENV from interpreter $1. Tries, in order:
#   1. the stdlib venv module (needs ensurepip; Debian's own python3 lacks it
#      unless the python3-venv package is installed),
#   2. virtualenv from PyPI, installed with `pip --target` into .tools (that
#      bypasses Debian's externally-managed-environment guard and needs no
#      ensurepip, as virtualenv ships its own pip wheel).
# Returns non-zero, leaving no partial venv behind, if both fail.
make_venv_with() {
    local py="$1"
    if "$py" -m venv "$VENV" >/dev/null 2>&1 && [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$VENV"
    if "$py" -m pip --version >/dev/null 2>&1; then
        say "venv module unusable for $py; trying virtualenv from PyPI"
        if "$py" -m pip install "${PIP_FLAGS[@]}" --upgrade --target "$TOOLS/virtualenv" \
            virtualenv >/dev/null &&
            PYTHONPATH="$TOOLS/virtualenv" "$py" -m virtualenv --quiet "$VENV" >/dev/null; then
            return 0
        fi
    fi
    rm -rf "$VENV"
    return 1
}

# Creates $VENV unless a working one (Python and pip run) is there.
ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    # A venv whose interpreter no longer runs (say, its base Python was
    # removed) or that lacks pip is rebuilt from scratch.
    rm -rf "$VENV"
    local py pythons
    mapfile -t pythons < <(python_candidates)
    for py in "${pythons[@]}"; do
        say "creating venv at .tools/venv from $py"
        make_venv_with "$py" && return 0
    done

    # Last resort on a bare Debian: the venv module lives in its own package.
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 && [[ -x /usr/bin/python3 ]]; then
        say "installing Debian's python3-venv"
        apt-get update -qq >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
            die "apt-get install python3-venv failed"
        make_venv_with /usr/bin/python3 && return 0
    fi
    die "could not create a Python venv: need Python >= 3.9 with the venv module or pip (set PGKEEP_PYTHON to choose one)"
}

install_moto() {
    # The stamp is written only after pip succeeded, so an interrupted run is
    # simply redone; its name carries the version so a bump reinstalls.
    local stamp="$VENV/.pgkeep-moto-server-$MOTO_VERSION"
    if [[ -f "$stamp" && -x "$VENV/bin/moto_server" ]] &&
        "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        say "moto[server]==$MOTO_VERSION already installed"
        return 0
    fi
    ensure_venv
    say "installing moto[server]==$MOTO_VERSION into .tools/venv"
    rm -f "$VENV"/.pgkeep-moto-server-*
    "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "moto[server]==$MOTO_VERSION"
    [[ -x "$VENV/bin/moto_server" ]] || die "pip finished but $VENV/bin/moto_server is missing"
    touch "$stamp"
    say "moto_server ready: .tools/venv/bin/moto_server"
}

main() {
    take_lock
    install_moto
}

main "$@"
