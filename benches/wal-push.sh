#!/usr/bin/env bash
# archive_command cost: `pgkeep wal-push` beside pgBackRest `archive-push`, on this machine,
# in one run, on the same 16 MiB segments of pgbench WAL from a throwaway PostgreSQL 15
# cluster on loopback.
#
#   benches/wal-push.sh               # 24 segments
#   SEGMENTS=48 benches/wal-push.sh
#
# Two measurements:
#   1. per call: each tool archives every segment one call at a time, no look-ahead or async
#      mode, in alternating order (pgkeep, pgBackRest, pgkeep, ...); medians and ratio.
#   2. a backlog: the same segments waiting as .ready files in the server's pg_wal, archived
#      in order one call each as PostgreSQL would; pgkeep with its default look-ahead (4), pgBackRest
#      with archive-async and process-max=2 (its own way to work ahead). Segments per second.
# Both tools: zstd level 1, encryption on (pgkeep AES-256-GCM, pgBackRest aes-256-cbc),
# local repositories, fsync on.
#
# Needs root (the cluster runs as the postgres OS user); installs pgbackrest from Debian if
# missing; builds pgkeep in release mode. Takes a few minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SEGMENTS=${SEGMENTS:-24}
PORT=${PORT:-55433}

bash scripts/install-test-deps.sh >/dev/null
command -v pgbackrest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
cargo build --release --locked --bin pgkeep
PGKEEP=$PWD/target/release/pgkeep
BIN=/usr/lib/postgresql/15/bin

WORK=$(mktemp -d /tmp/pgkeep-walbench.XXXXXX)
chown postgres "$WORK"
cleanup() {
    runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
as_pg() { runuser -u postgres -- env -C "$WORK" "$@"; }

as_pg "$BIN/initdb" -D "$WORK/data" -A trust --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = ''
max_wal_size = 4GB
CONF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

# pgkeep: a repository, and a key for the archiver with a random passphrase (no stretching
# needed), as README "WAL archiving" recommends.
head -c 32 /dev/urandom | base64 > "$WORK/pass"
chmod 600 "$WORK/pass"
chown postgres "$WORK/pass"
cat > "$WORK/pgkeep.toml" <<TOML
repo = "$WORK/pgkeep-repo"
passphrase_file = "$WORK/pass"
compression = 1
TOML
chown postgres "$WORK/pgkeep.toml"
as_pg env PGKEEP_KDF_MEMORY_MIB=1 PGKEEP_KDF_ITERATIONS=1 "$PGKEEP" --config "$WORK/pgkeep.toml" init >/dev/null

# pgBackRest: a stanza with the matching settings.
mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
chown -R postgres "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
cat > "$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
compress-type=zst
compress-level=1
log-path=$WORK/pgbr-log
spool-path=$WORK/pgbr-spool
lock-path=$WORK/pgbr-spool
log-level-console=warn
start-fast=y

[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-socket-path=$WORK
CONF
chown postgres "$WORK/pgbackrest.conf"
chmod 600 "$WORK/pgbackrest.conf"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
as_pg "${PGBR[@]}" stanza-create >/dev/null

# Segments: pgbench WAL, copied out while the server keeps them (.ready: not archived).
as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -i -q -s 20 postgres >/dev/null 2>&1
while [ "$(ls "$WORK/data/pg_wal/archive_status/" | grep -c '\.ready$')" -lt "$SEGMENTS" ]; do
    as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -n -T 5 -c 2 postgres >/dev/null 2>&1
done
mkdir -p "$WORK/segs"
for r in $(ls "$WORK/data/pg_wal/archive_status/" | grep '\.ready$' | sort | head -n "$SEGMENTS"); do
    seg=${r%.ready}
    cp "$WORK/data/pg_wal/$seg" "$WORK/segs/"
done
chown -R postgres "$WORK/segs"
mapfile -t SEGS < <(ls "$WORK/segs" | grep -E '^[0-9A-F]{24}$' | sort)

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# 1. Per call, alternating.
: > "$WORK/t-pgkeep"; : > "$WORK/t-pgbr"
for seg in "${SEGS[@]}"; do
    t0=$(now); as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" wal-push --lookahead 0 "$WORK/segs/$seg" >/dev/null; t1=$(now)
    as_pg "${PGBR[@]}" archive-push "$WORK/segs/$seg" >/dev/null; t2=$(now)
    echo "$t1 - $t0" | bc -l >> "$WORK/t-pgkeep"
    echo "$t2 - $t1" | bc -l >> "$WORK/t-pgbr"
done
k=$(median < "$WORK/t-pgkeep"); p=$(median < "$WORK/t-pgbr")

# 2. A backlog, fresh repositories, each tool in its working-ahead mode.
rm -rf "$WORK/pgkeep-repo"
as_pg env PGKEEP_KDF_MEMORY_MIB=1 PGKEEP_KDF_ITERATIONS=1 "$PGKEEP" --config "$WORK/pgkeep.toml" init >/dev/null
as_pg "${PGBR[@]}" stop >/dev/null 2>&1 || true
as_pg "${PGBR[@]}" stanza-delete --force >/dev/null 2>&1 || true
as_pg "${PGBR[@]}" start >/dev/null 2>&1 || true
as_pg "${PGBR[@]}" stanza-create >/dev/null
# The backlog is the server's own pg_wal, where both tools look for the .ready files that
# let them work ahead (the server archives nothing meanwhile: archive_command is empty).
backlog() {
    local t0; t0=$(now)
    for seg in "${SEGS[@]}"; do
        "$@" "$WORK/data/pg_wal/$seg" >/dev/null
    done
    echo "$(now) - $t0" | bc -l
}
bk=$(backlog as_pg "$PGKEEP" --config "$WORK/pgkeep.toml" wal-push)
bp=$(backlog as_pg "${PGBR[@]}" --archive-async --process-max=2 archive-push)

n=${#SEGS[@]}
printf '\n%s segments of 16 MiB (pgbench WAL), zstd 1, encrypted, local repositories\n' "$n"
printf '%-40s %12s %12s %8s\n' measurement pgBackRest pgkeep ratio
awk -v p="$p" -v k="$k" 'BEGIN { printf "%-40s %10.1f ms %10.1f ms %7.2fx\n", "per call, median (no look-ahead/async)", p*1000, k*1000, k/p }'
awk -v n="$n" -v p="$bp" -v k="$bk" 'BEGIN { printf "%-40s %8.1f seg/s %8.1f seg/s %7.2fx\n", "backlog, one call per segment", n/p, n/k, (n/k)/(n/p) }'
echo "(ratio: pgkeep / pgBackRest; for time lower is better, for segments per second higher)"
