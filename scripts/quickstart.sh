#!/usr/bin/env bash
# pgkeep's whole story on a brand-new machine, narrated: a throwaway PostgreSQL 15 cluster
# archiving its WAL with `pgkeep wal-push`, data, a backup, more writes, an accidental
# DROP TABLE, `pgkeep events` finding it, a restore to just before it with --start, and the
# table back. Everything lives in a temporary directory and is removed at the end.
#
# Run as root on Debian (it installs PostgreSQL 15 through scripts/install-test-deps.sh and
# runs the cluster and pgkeep as the `postgres` OS user, as a DBA would). Takes a few minutes
# the first time (building pgkeep).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# Runs a command as the postgres OS user, showing it first.
as_pg() { printf '$ %s\n' "$*"; runuser -u postgres -- env -C "$WORK" "$@"; }
sql() { runuser -u postgres -- "$BIN/psql" -X -q -h "$WORK" -p "$PORT" -d postgres -Atc "$1"; }

if [ "$(id -u)" != 0 ]; then
    echo "run as root: it installs PostgreSQL and runs it as the postgres OS user" >&2
    exit 2
fi

say "Building pgkeep (release; the first build takes a few minutes)"
cargo build --release --locked --bin pgkeep
say "Installing PostgreSQL 15 if needed"
bash scripts/install-test-deps.sh >/dev/null
BIN=/usr/lib/postgresql/15/bin
PORT=${PORT:-55499}

WORK=$(mktemp -d /tmp/pgkeep-quickstart.XXXXXX)
install -m 755 target/release/pgkeep "$WORK/pgkeep"
PGKEEP=$WORK/pgkeep
chown postgres "$WORK"
cleanup() {
    for d in "$WORK/data" "$WORK/restored"; do
        runuser -u postgres -- "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

say "A repository, with its passphrase in a private file (never on a command line)"
runuser -u postgres -- sh -c "umask 077; head -c 32 /dev/urandom | base64 > '$WORK/passphrase'"
runuser -u postgres -- sh -c "umask 077; cat > '$WORK/pgkeep.toml'" <<TOML
repo = "$WORK/repo"
passphrase_file = "$WORK/passphrase"
cluster = "demo"
TOML
cat "$WORK/pgkeep.toml"
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" init --kdf-memory-mib 8 --kdf-iterations 1

say "A throwaway PostgreSQL 15 cluster that archives its WAL with pgkeep wal-push"
runuser -u postgres -- "$BIN/initdb" -D "$WORK/data" -A trust --data-checksums --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$PGKEEP --config $WORK/pgkeep.toml wal-push %p'
CONF
echo "host replication all 127.0.0.1/32 trust" >> "$WORK/data/pg_hba.conf"
grep archive_command "$WORK/data/postgresql.conf"
runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

say "Some data: 100 000 customers"
sql "CREATE TABLE customers AS SELECT g AS id, 'customer ' || g AS name FROM generate_series(1, 100000) g"
echo "customers: $(sql 'SELECT count(*) FROM customers')"

say "A base backup over the replication protocol"
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" backup --pg "host=$WORK port=$PORT user=postgres" --label first

say "More writes after the backup, then the mistake"
sql "INSERT INTO customers SELECT g, 'late customer ' || g FROM generate_series(100001, 100500) g"
echo "customers: $(sql 'SELECT count(*) FROM customers')"
sleep 1
echo '$ psql -c "DROP TABLE customers"   -- oops'
sql "DROP TABLE customers"
sql "SELECT pg_switch_wal()" >/dev/null
# Wait until the segment with the DROP is archived.
for _ in $(seq 100); do
    [ "$(sql "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")" = 0 ] && break
    sleep 0.2
done

say "What happened? pgkeep events lists restore points, aborts and transactions that dropped relations"
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" events
XID=$(runuser -u postgres -- "$PGKEEP" --config "$WORK/pgkeep.toml" --json events |
    python3 -c 'import json,sys; print([e["xid"] for e in json.load(sys.stdin) if e["dropped"]][-1])')
echo "the DROP TABLE was transaction $XID"

say "Restore to just before that transaction, replay up to it, and promote"
# Promote: paused at the target, the half-replayed DROP would still hold its lock on the
# table (hot standby replays locks); ending recovery aborts it.
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" restore --pgdata "$WORK/restored" \
    --target-xid "$XID" --target-exclusive --target-action promote \
    --start --port $((PORT + 1)) --pg-bin "$BIN"

say "The table is back, with the rows written after the backup"
echo "customers: $(runuser -u postgres -- "$BIN/psql" -X -h "$WORK/restored" -p $((PORT + 1)) -d postgres -Atc 'SELECT count(*) FROM customers')"
echo
echo "The restored server runs on a new timeline, with the table as it was just before the"
echo "DROP. (With the default --target-action pause it would wait at the target for you to"
echo "check it first.) This demo now cleans up."
