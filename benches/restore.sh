#!/usr/bin/env bash
# Restore throughput: `pgkeep restore` beside `pgbackrest restore` of the same database, on
# this machine, in one run: a pgbench database (scale 50 by default, about 750 MB) in a
# throwaway PostgreSQL 15 cluster, one full backup by each tool (zstd level 1, encryption on,
# local repositories), then RUNS pairs of restores into empty directories (pgBackRest then
# pgkeep, pgkeep then pgBackRest, ...), each tool with 2 parallel jobs. Files only: no
# recovery run.
#
#   benches/restore.sh
#   SCALE=100 RUNS=5 benches/restore.sh
#   WRITES=30 benches/restore.sh        # restore an incremental taken after `pgbench -T 30`
#   PGKEEP_BIN=/tmp/old/pgkeep benches/restore.sh   # time another pgkeep build (A/B)
#
# With WRITES=N, both tools take their incremental backup (pgkeep's default, page-level;
# pgBackRest `--type=incr`, file-level) after N seconds of `pgbench -c 4 -j 2`, and the
# restores are of that incremental: the case where a file is rebuilt from two backups.
#
# Needs root (the cluster runs as the postgres OS user); installs pgbackrest from Debian if
# missing; builds pgkeep in release mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALE=${SCALE:-50}
RUNS=${RUNS:-3}
WRITES=${WRITES:-0}
PORT=${PORT:-55435}

bash scripts/install-test-deps.sh >/dev/null
command -v pgbackrest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
cargo build --release --locked --bin pgkeep
BIN=/usr/lib/postgresql/15/bin

WORK=$(mktemp -d /tmp/pgkeep-restorebench.XXXXXX)
install -m 755 "${PGKEEP_BIN:-target/release/pgkeep}" "$WORK/pgkeep"
PGKEEP=$WORK/pgkeep
chown postgres "$WORK"
cleanup() {
    runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
as_pg() { runuser -u postgres -- env -C "$WORK" "$@"; }

# pgkeep: repository at zstd 1 (the archiver's key with cheap KDF parameters).
as_pg sh -c "umask 077; head -c 32 /dev/urandom | base64 > '$WORK/pass'"
as_pg sh -c "umask 077; printf 'repo = \"%s\"\npassphrase_file = \"%s\"\ncompression = 1\njobs = 2\n' '$WORK/pgkeep-repo' '$WORK/pass' > '$WORK/pgkeep.toml'"
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null

as_pg "$BIN/initdb" -D "$WORK/data" -A trust --data-checksums --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_size = 4GB
archive_mode = on
archive_command = '$PGKEEP --config $WORK/pgkeep.toml wal-push %p'
CONF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -i -q -s "$SCALE" postgres >/dev/null 2>&1
size=$(as_pg "$BIN/psql" -h "$WORK" -p "$PORT" -XAtc "SELECT pg_database_size('postgres')" postgres)

# pgkeep: a backup; its WAL is archived by the cluster's archive_command (a restore is
# planned against the archive, so it needs the backup's WAL there).
archived() { # waits until the server has archived every finished segment
    as_pg "$BIN/psql" -h "$WORK" -p "$PORT" -XAtc "SELECT pg_switch_wal()" postgres >/dev/null
    for _ in $(seq 300); do
        ready=$(as_pg "$BIN/psql" -h "$WORK" -p "$PORT" -XAtc "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'" postgres)
        [ "$ready" = 0 ] && return
        sleep 0.2
    done
}
as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" backup --pg "host=$WORK port=$PORT user=postgres" >/dev/null
archived

# pgBackRest: the same settings, a full backup (no WAL archiving configured: archive-check off).
mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
chown -R postgres "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
cat > "$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
compress-type=zst
compress-level=1
process-max=2
log-path=$WORK/pgbr-log
spool-path=$WORK/pgbr-spool
lock-path=$WORK/pgbr-spool
log-level-console=warn
start-fast=y
archive-check=n

[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-socket-path=$WORK
CONF
chown postgres "$WORK/pgbackrest.conf"
chmod 600 "$WORK/pgbackrest.conf"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
as_pg "${PGBR[@]}" stanza-create >/dev/null
as_pg "${PGBR[@]}" --type=full backup >/dev/null

what="full backup"
if [ "$WRITES" -gt 0 ]; then
    as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -n -c 4 -j 2 -T "$WRITES" postgres >/dev/null 2>&1
    as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" backup --pg "host=$WORK port=$PORT user=postgres" >/dev/null
    archived
    as_pg "${PGBR[@]}" --type=incr backup >/dev/null
    what="incremental backup after pgbench -T $WRITES"
fi

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: > "$WORK/t-pgbr"; : > "$WORK/t-pgkeep"
# Which tool goes first alternates (A B, B A, ...): see compare.sh, step 4.
restore_pgbr() {
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now); as_pg "${PGBR[@]}" --pg1-path="$WORK/r-pgbr" --type=immediate restore >/dev/null; t1=$(now)
    echo "$t1 - $t0" | bc -l >> "$WORK/t-pgbr"
}
restore_pgkeep() {
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now); as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" restore --pgdata "$WORK/r-pgkeep" --target-immediate >/dev/null; t1=$(now)
    echo "$t1 - $t0" | bc -l >> "$WORK/t-pgkeep"
}
for i in $(seq "$RUNS"); do
    rm -rf "$WORK/r-pgbr" "$WORK/r-pgkeep"
    if [ $((i % 2)) = 1 ]; then restore_pgbr; restore_pgkeep; else restore_pgkeep; restore_pgbr; fi
done
p=$(median < "$WORK/t-pgbr"); k=$(median < "$WORK/t-pgkeep")
printf '\nrestore (%s) of a %s MB pgbench database (scale %s), zstd 1, encrypted, 2 jobs, median of %s alternating runs\n' \
    "$what" "$((size / 1000000))" "$SCALE" "$RUNS"
printf '%-24s %12s %12s %8s\n' measurement pgBackRest pgkeep ratio
awk -v p="$p" -v k="$k" -v s="$size" 'BEGIN {
    printf "%-24s %10.2f s %10.2f s %7.2fx\n", "wall time", p, k, k / p
    printf "%-24s %8.0f MB/s %8.0f MB/s %7.2fx\n", "throughput", s / p / 1e6, s / k / 1e6, p / k
}'
echo "(ratio: pgkeep / pgBackRest for time, lower is better; for throughput higher is better)"
