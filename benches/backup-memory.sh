#!/usr/bin/env bash
# Peak memory of `pgkeep backup` against database size: backs up pgbench databases of about
# 1 GB and 3 GB (scales 65 and 200) from a throwaway PostgreSQL 15 cluster on loopback and
# reports the peak RSS of each run (from /usr/bin/time). The target: flat, and under 256 MiB.
#
#   benches/backup-memory.sh              # scales 65 and 200
#   SCALES="20 65" benches/backup-memory.sh
#   WRAP="heaptrack -o /tmp/ht" benches/backup-memory.sh   # heap profile of each backup
#
# Needs root (the cluster runs as the postgres OS user). Installs what it needs through
# scripts/install-test-deps.sh and builds pgkeep in release mode. Takes about 10 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALES=${SCALES:-"65 200"}
PORT=${PORT:-55432}

bash scripts/install-test-deps.sh >/dev/null
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --release --locked --bin pgkeep
PGKEEP=$PWD/target/release/pgkeep
BIN=/usr/lib/postgresql/15/bin

WORK=$(mktemp -d /tmp/pgkeep-membench.XXXXXX)
chown postgres "$WORK"
cleanup() {
    runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

runuser -u postgres -- "$BIN/initdb" -D "$WORK/data" -A trust --data-checksums --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_size = 4GB
shared_buffers = 128MB
CONF
echo "host replication all 127.0.0.1/32 trust" >> "$WORK/data/pg_hba.conf"
runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

export PGKEEP_PASSPHRASE=membench PGKEEP_KDF_MEMORY_MIB=8 PGKEEP_KDF_ITERATIONS=1
printf '%-6s %-10s %-12s %-10s %s\n' scale database "peak RSS" seconds throughput
for scale in $SCALES; do
    runuser -u postgres -- "$BIN/pgbench" -h "$WORK" -p "$PORT" -i -q -s "$scale" postgres >/dev/null 2>&1
    size=$(runuser -u postgres -- "$BIN/psql" -h "$WORK" -p "$PORT" -XAtc "SELECT pg_database_size('postgres')" postgres)
    repo="$WORK/repo-$scale"
    "$PGKEEP" --repo "$repo" init >/dev/null
    start=$(date +%s.%N)
    # shellcheck disable=SC2086 # $WRAP is a command prefix, split on purpose
    /usr/bin/time -f '%M' -o "$WORK/rss" ${WRAP:-} "$PGKEEP" --repo "$repo" backup --full \
        --pg "host=127.0.0.1 port=$PORT user=postgres sslmode=disable" >/dev/null
    end=$(date +%s.%N)
    rss_kib=$(tail -1 "$WORK/rss")
    awk -v s="$scale" -v db="$size" -v rss="$rss_kib" -v t0="$start" -v t1="$end" 'BEGIN {
        t = t1 - t0
        printf "%-6s %-10s %-12s %-10.1f %.0f MB/s\n", s, sprintf("%.2f GB", db / 1e9), sprintf("%.0f MiB", rss / 1024), t, db / t / 1e6
    }'
done
