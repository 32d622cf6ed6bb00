#!/usr/bin/env bash
# The end-to-end comparison: pgkeep beside the protocol ceiling (pg_basebackup to /dev/null)
# and pgBackRest, on this machine, in one run, on one generated reference dataset. Prints one
# table (peer, pgkeep, ratio, target) and writes it to benches/RESULTS.md with the machine
# description and the date. See benches/README.md ("The comparison harness").
#
#   benches/compare.sh                                    # the reference run (~25 min)
#   SCALE=5 ROWS=200000 RUNS=1 PGBENCH_SECONDS=5 OUT=/tmp/r.md benches/compare.sh   # a smoke run
#
# Environment (defaults give the issue's reference dataset, about 2.7 GB):
#   SCALE=100            pgbench scale of the dataset
#   ROWS=5000000         rows of the extra `bench_rows` table (moderately compressible)
#   RUNS=3               alternating runs per timed comparison (medians are reported)
#   PGBENCH_SECONDS=30   length of the write load between a full and the next backup
#   SEGMENTS=24          WAL segments for the wal-push comparison
#   GROW=1               also back up a dataset three times as large (peak RSS stays flat?)
#   PG18=1               also run the PostgreSQL 18 part (server-side INCREMENTAL)
#   OUT=benches/RESULTS.md
#
# Needs root (clusters run as the postgres OS user). Installs what it lacks (test
# dependencies, pgbackrest, GNU time) and builds pgkeep in release mode. All traffic stays
# on Unix sockets and loopback. Everything lives in one temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SCALE=${SCALE:-100}
ROWS=${ROWS:-5000000}
RUNS=${RUNS:-3}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-30}
SEGMENTS=${SEGMENTS:-24}
GROW=${GROW:-1}
PG18=${PG18:-1}
OUT=${OUT:-$ROOT/benches/RESULTS.md}
PORT15=${PORT15:-55441}
PORT18=${PORT18:-55442}
BIN15=/usr/lib/postgresql/15/bin
BIN18=${PGKEEP_PG18_BIN:-/opt/pgkeep-test/pg18/bin}

say() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bash scripts/install-test-deps.sh >/dev/null
command -v pgbackrest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
cargo build --release --locked --bin pgkeep
started=$(date -u '+%Y-%m-%d %H:%M UTC')
# CPU time the hypervisor gave to other guests ("steal") during the run: on a shared host it
# moves every timing, so the results say how much there was.
# Fields of the cpu line: user nice system idle iowait irq softirq steal (then guest time,
# already counted in user).
cpu_times() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}' /proc/stat; }
cpu0=$(cpu_times)

WORK=$(mktemp -d /tmp/pgkeep-compare.XXXXXX)
chmod 755 "$WORK"
install -m 755 target/release/pgkeep "$WORK/pgkeep"
PGKEEP=$WORK/pgkeep
chown postgres "$WORK"
cleanup() {
    [ -d "$WORK/pg15" ] && runuser -u postgres -- "$BIN15/pg_ctl" -D "$WORK/pg15" -m immediate stop >/dev/null 2>&1 || true
    [ -d "$WORK/pg18" ] && runuser -u postgres -- "$BIN18/pg_ctl" -D "$WORK/pg18" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
as_pg() { runuser -u postgres -- env -C "$WORK" "$@"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
maxof() { sort -g | tail -1; }
# Bytes a repository stores, without WAL (pgkeep: packs, index, manifests; pgBackRest: backup/).
stored() { { du -sb "$@" 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'; }
pgkeep_stored() { stored "$1/data" "$1/index" "$1"/clusters/*/backups; }
pgbr_stored() { stored "$WORK/pgbr-repo/backup"; }

# Results: one line per measurement, tab-separated:
#   measurement  peer-name  peer-value  pgkeep-value  unit  target-ratio(or -)  note
: > "$WORK/results.tsv"
result() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/results.tsv"; }
# Timed runs append "seconds peak-RSS-KiB" to a file named for what they measure.
timed() { # timed FILE cmd...: runs cmd as postgres, appends its wall seconds and peak RSS
    local file=$1 t0 t1; shift
    t0=$(now)
    as_pg /usr/bin/time -f '%M' -o "$WORK/rss.tmp" "$@" >/dev/null
    t1=$(now)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') $(tail -1 "$WORK/rss.tmp")" >> "$WORK/$file"
}
col() { awk -v c="$1" '{print $c}' "$WORK/$2"; }
last() { tail -1 "$WORK/$1" | awk '{print $1}'; }

# ---------------------------------------------------------------------------------------------
# A cluster, configured for both tools; its WAL is archived into pgkeep's "main" repository.
start_cluster() { # start_cluster NAME BIN PORT [extra conf lines]
    local name=$1 bin=$2 port=$3 extra=${4:-}
    as_pg "$bin/initdb" -D "$WORK/$name" -A trust --data-checksums --no-sync >/dev/null
    cat >> "$WORK/$name/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_size = 4GB
shared_buffers = 256MB
archive_mode = on
archive_command = '$PGKEEP --config $WORK/pgkeep-$name.toml wal-push %p'
$extra
CONF
    as_pg "$bin/pg_ctl" -D "$WORK/$name" -l "$WORK/$name.log" -w start >/dev/null
}
psql_at() { local bin=$1 port=$2; shift 2; as_pg "$bin/psql" -h "$WORK" -p "$port" -XAtq -v ON_ERROR_STOP=1 "$@" postgres; }
pgkeep_config() { # pgkeep_config NAME REPO: a config file whose repository is REPO
    as_pg sh -c "umask 077; printf 'repo = \"%s\"\npassphrase_file = \"%s\"\n' '$2' '$WORK/pass' > '$WORK/pgkeep-$1.toml'"
}
# pgkeep_init REPO: a new repository with the default compression. Its key has the KDF
# parameters README ("Key cost per call") recommends for archive_command's key, a long
# random passphrase that needs no stretching: 1 MiB, 1 pass. (pgBackRest's cipher-pass is
# used as it is, unstretched.)
pgkeep_init() {
    as_pg env PGKEEP_KDF_MEMORY_MIB=1 PGKEEP_KDF_ITERATIONS=1 "$PGKEEP" --repo "$1" \
        --passphrase-file "$WORK/pass" init >/dev/null
}
pk() { echo "$PGKEEP" --repo "$1" --passphrase-file "$WORK/pass"; }
build_dataset() { # build_dataset BIN PORT
    local bin=$1 port=$2
    as_pg "$bin/pgbench" -h "$WORK" -p "$port" -i -q -s "$SCALE" postgres >/dev/null 2>&1
    psql_at "$bin" "$port" -c "CREATE TABLE bench_rows AS SELECT g AS id,
        md5(g::text) || md5((g * 7)::text) AS t, (random() * 1e9)::bigint AS n,
        repeat(md5((g % 1000)::text), 4) AS r FROM generate_series(1, $ROWS) g"
    # Frozen and hinted now, so that no later read rewrites a page (with data checksums a
    # hint-bit change is WAL-logged and moves the page LSN: the unchanged database would not be).
    psql_at "$bin" "$port" -c "VACUUM (FREEZE, ANALYZE)" -c "CHECKPOINT"
}
dataset_bytes() { psql_at "$1" "$2" -c "SELECT sum(pg_database_size(oid)) FROM pg_database"; }
wait_archived() { # wait_archived BIN PORT: until the server has nothing left to archive
    local i
    for i in $(seq 600); do
        [ "$(psql_at "$1" "$2" -c "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")" = 0 ] && return 0
        sleep 0.5
    done
    say "archiving did not catch up"; return 1
}

# ---------------------------------------------------------------------------------------------
head -c 32 /dev/urandom | base64 > "$WORK/pass"
chmod 600 "$WORK/pass"; chown postgres "$WORK/pass"
MAIN=$WORK/pgkeep-main
pgkeep_config pg15 "$MAIN"
pgkeep_init "$MAIN"
say "PostgreSQL 15: building the dataset (pgbench scale $SCALE + $ROWS rows)"
start_cluster pg15 "$BIN15" "$PORT15"
build_dataset "$BIN15" "$PORT15"
wait_archived "$BIN15" "$PORT15"
SIZE=$(dataset_bytes "$BIN15" "$PORT15")
CONN="host=$WORK port=$PORT15 user=postgres"
say "dataset: $((SIZE / 1000000)) MB"

mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
chown -R postgres "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-log"
cat > "$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
repo1-retention-full=99
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
pg1-path=$WORK/pg15
pg1-port=$PORT15
pg1-socket-path=$WORK
CONF
chown postgres "$WORK/pgbackrest.conf"; chmod 600 "$WORK/pgbackrest.conf"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
as_pg "${PGBR[@]}" stanza-create >/dev/null

# 1. Full backups, alternating: ceiling, pgkeep, pgBackRest. pgkeep's first full goes into
# the main repository (which holds the archived WAL, for the restores below); the others into
# new repositories, so that none deduplicates against an earlier one.
say "full backups: $RUNS alternating runs"
for i in $(seq "$RUNS"); do
    timed full-ceiling "$BIN15/pg_basebackup" -h "$WORK" -p "$PORT15" -U postgres -Ft -X none -c fast -D -
    repo=$MAIN
    if [ "$i" -gt 1 ]; then repo=$WORK/scratch; rm -rf "$repo"; pgkeep_init "$repo"; fi
    before=$(pgkeep_stored "$repo")
    timed full-pgkeep $(pk "$repo") backup --full --pg "$CONN"
    echo $(($(pgkeep_stored "$repo") - before)) >> "$WORK/bytes-full-pgkeep"
    before=$(pgbr_stored)
    timed full-pgbr "${PGBR[@]}" --type=full backup
    echo $(($(pgbr_stored) - before)) >> "$WORK/bytes-full-pgbr"
    say "run $i: ceiling $(last full-ceiling) s, pgkeep $(last full-pgkeep) s, pgBackRest $(last full-pgbr) s"
done
rm -rf "$WORK/scratch"
paste -d' ' <(col 1 full-ceiling) <(col 1 full-pgkeep) <(col 1 full-pgbr) > "$WORK/full-pairs"
ceil=$(col 1 full-ceiling | median); fk=$(col 1 full-pgkeep | median); fb=$(col 1 full-pgbr | median)
result "full backup, wall time (s)" "pg_basebackup -Ft -X none to /dev/null" "$ceil" "$fk" s 1.15 \
    "pairs (pgkeep/ceiling): $(awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $1}' "$WORK/full-pairs")"
result "full backup, wall time (s)" "pgBackRest full (zst 1, aes-256-cbc, process-max 2)" "$fb" "$fk" s 0.75 \
    "pairs (pgkeep/pgBackRest): $(awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $3}' "$WORK/full-pairs")"
result "full backup, stored bytes (MB)" "pgBackRest full" "$(($(median < "$WORK/bytes-full-pgbr") / 1000000))" \
    "$(($(median < "$WORK/bytes-full-pgkeep") / 1000000))" MB - "dataset $((SIZE / 1000000)) MB"

# 2. The unchanged database backed up again.
say "unchanged database, backed up again"
before=$(pgkeep_stored "$MAIN"); mbefore=$(stored "$MAIN"/clusters/*/backups)
timed again-pgkeep $(pk "$MAIN") backup --pg "$CONN"
new=$(($(pgkeep_stored "$MAIN") - before)); man=$(($(stored "$MAIN"/clusters/*/backups) - mbefore))
before=$(pgbr_stored)
timed again-pgbr "${PGBR[@]}" --type=incr backup
newb=$(($(pgbr_stored) - before))
result "unchanged database again: new bytes without manifest (KiB)" "pgBackRest incr" \
    "$((newb / 1024))" "$(((new - man) / 1024))" KiB - "pgkeep manifest $((man / 1024)) KiB; target: under 1024 KiB plus the manifest"
result "unchanged database again, wall time (s)" "pgBackRest incr" "$(last again-pgbr)" "$(last again-pgkeep)" s - ""

# 3. A write load (archived by pgkeep as it runs), then a second backup of each.
say "pgbench write load, $PGBENCH_SECONDS s, archived by pgkeep wal-push"
lsn0=$(psql_at "$BIN15" "$PORT15" -c "SELECT pg_current_wal_lsn()")
: > "$WORK/ready-samples"
( for _ in $(seq $((PGBENCH_SECONDS + 5))); do
      psql_at "$BIN15" "$PORT15" -c "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'" >> "$WORK/ready-samples" 2>/dev/null || true
      sleep 1
  done ) &
sampler=$!
as_pg "$BIN15/pgbench" -h "$WORK" -p "$PORT15" -n -c 4 -j 2 -T "$PGBENCH_SECONDS" postgres >/dev/null 2>&1
lsn1=$(psql_at "$BIN15" "$PORT15" -c "SELECT pg_current_wal_lsn()")
wal_bytes=$(psql_at "$BIN15" "$PORT15" -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
t0=$(now); psql_at "$BIN15" "$PORT15" -c "SELECT pg_switch_wal()" >/dev/null; wait_archived "$BIN15" "$PORT15"; catchup=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')
wait "$sampler" || true
gen_rate=$(awk -v b="$wal_bytes" -v t="$PGBENCH_SECONDS" 'BEGIN {printf "%.2f", b / 16777216 / t}')
max_ready=$(maxof < "$WORK/ready-samples")
failed=$(psql_at "$BIN15" "$PORT15" -c "SELECT failed_count FROM pg_stat_archiver")

say "second backups after the load"
before=$(pgkeep_stored "$MAIN")
timed incr-pgkeep $(pk "$MAIN") backup --pg "$CONN"
newk=$(($(pgkeep_stored "$MAIN") - before))
before=$(pgbr_stored)
timed incr-pgbr "${PGBR[@]}" --type=incr backup
newb=$(($(pgbr_stored) - before))
fullk=$(median < "$WORK/bytes-full-pgkeep")
result "backup after pgbench -T $PGBENCH_SECONDS: new stored bytes (MB)" "pgBackRest incr" "$((newb / 1000000))" "$((newk / 1000000))" MB - \
    "pgkeep: $(awk -v n="$newk" -v f="$fullk" 'BEGIN {printf "%.1f%%", 100 * n / f}') of its full (target: at most 10%)"
result "backup after pgbench -T $PGBENCH_SECONDS, wall time (s)" "pgBackRest incr" "$(last incr-pgbr)" "$(last incr-pgkeep)" s - ""

# 4. Restores of the newest backup into empty directories, alternating which tool goes
# first (A B, B A, ...): a restore right after the two previous restores were deleted pays
# more in ext4's inode allocator (`recently_deleted` skips inodes freed seconds ago), and
# always running one tool second measured that, not the tool.
say "restores: $RUNS alternating runs"
restore_pgbr() {
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    timed restore-pgbr "${PGBR[@]}" --pg1-path="$WORK/r-pgbr" --type=immediate restore
}
restore_pgkeep() {
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    timed restore-pgkeep $(pk "$MAIN") restore --pgdata "$WORK/r-pgkeep" --target-immediate
}
for i in $(seq "$RUNS"); do
    rm -rf "$WORK/r-pgbr" "$WORK/r-pgkeep"
    if [ $((i % 2)) = 1 ]; then restore_pgbr; restore_pgkeep; else restore_pgkeep; restore_pgbr; fi
    say "run $i: pgBackRest $(last restore-pgbr) s, pgkeep $(last restore-pgkeep) s"
done
rm -rf "$WORK/r-pgbr" "$WORK/r-pgkeep"
paste -d' ' <(col 1 restore-pgbr) <(col 1 restore-pgkeep) > "$WORK/restore-pairs"
result "restore of the newest backup, wall time (s)" "pgBackRest restore (process-max 2)" \
    "$(col 1 restore-pgbr | median)" "$(col 1 restore-pgkeep | median)" s 0.8 \
    "pairs: $(awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $1}' "$WORK/restore-pairs")"

# 5. wal-push: one call per segment, alternating, on copies of real segments (copied into
# place beforehand, not timed), each tool into a repository that has never seen them; then
# the sustained rate: the same number of segments left for PostgreSQL's archiver.
say "wal-push: $SEGMENTS segments"
psql_at "$BIN15" "$PORT15" -c "ALTER SYSTEM SET archive_command = ''" -c "SELECT pg_reload_conf()" >/dev/null
psql_at "$BIN15" "$PORT15" -c "SELECT pg_switch_wal()" >/dev/null
while [ "$(ls "$WORK/pg15/pg_wal/archive_status/" | grep -c '\.ready$')" -lt "$SEGMENTS" ]; do
    as_pg "$BIN15/pgbench" -h "$WORK" -p "$PORT15" -n -c 2 -T 5 postgres >/dev/null 2>&1
done
mkdir -p "$WORK/segs"
for r in $(ls "$WORK/pg15/pg_wal/archive_status/" | grep '\.ready$' | sort | head -n "$SEGMENTS"); do
    cp "$WORK/pg15/pg_wal/${r%.ready}" "$WORK/segs/"
done
chown -R postgres "$WORK/segs"
pgkeep_init "$WORK/walrepo"
# Each call is timed inside one shell that runs as postgres, from bash's $EPOCHREALTIME before
# the call to after it (GNU time around it for the peak RSS, the same for both tools): a
# runuser per call would add its own start, a PAM session of several ms, to both tools' times.
as_pg env PK="$(pk "$WORK/walrepo")" BR="${PGBR[*]}" bash -c '
    for seg in $(ls segs | sort); do
        for tool in pgkeep pgbr; do
            if [ $tool = pgkeep ]; then cmd="$PK wal-push --lookahead 0"; else cmd="$BR archive-push"; fi
            t0=$EPOCHREALTIME
            /usr/bin/time -f %M -o rss.push $cmd "$PWD/segs/$seg" >/dev/null || exit 1
            t1=$EPOCHREALTIME
            echo "$tool $t0 $t1 $(tail -1 rss.push)"
        done
    done' | while read -r tool t0 t1 rss; do
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}') $rss" >> "$WORK/push-$tool"
done
result "wal-push, one call per 16 MiB segment, median (ms)" "pgBackRest archive-push" \
    "$(col 1 push-pgbr | median | awk '{printf "%.1f", $1 * 1000}')" \
    "$(col 1 push-pgkeep | median | awk '{printf "%.1f", $1 * 1000}')" ms 0.5 "run as postgres, process start to exit, timed inside one postgres shell"
ready=$(ls "$WORK/pg15/pg_wal/archive_status/" | grep -c '\.ready$' || true)
t0=$(now)
psql_at "$BIN15" "$PORT15" -c "ALTER SYSTEM RESET archive_command" -c "SELECT pg_reload_conf()" >/dev/null
wait_archived "$BIN15" "$PORT15"
drain=$(awk -v n="$ready" -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.2f", n / (b - a)}')
result "sustained archiving (segments/s)" "WAL generated by pgbench -c 4 -T $PGBENCH_SECONDS" "$gen_rate" "$drain" seg/s "4 (min)" \
    "pgkeep drained a $ready-segment backlog through the server's archiver; during the load at most $max_ready segments waited, $catchup s to catch up after, failed_count $failed"
rm -rf "$WORK/segs" "$WORK/walrepo"

# 6. Peak memory: every pgkeep run so far, and a full backup of a dataset three times larger.
rss_full=$(col 2 full-pgkeep | maxof)
rss_push=$(col 2 push-pgkeep | maxof)
rss_restore=$(col 2 restore-pgkeep | maxof)
if [ "$GROW" = 1 ]; then
    say "growing the dataset threefold"
    rm -rf "$WORK/pgbr-repo" # not needed any more: room on disk
    psql_at "$BIN15" "$PORT15" -c "CREATE TABLE bench_rows_2 AS SELECT * FROM bench_rows" \
        -c "CREATE TABLE bench_rows_3 AS SELECT * FROM bench_rows" \
        -c "CREATE TABLE accounts_2 AS SELECT * FROM pgbench_accounts" \
        -c "CREATE TABLE accounts_3 AS SELECT * FROM pgbench_accounts" -c "CHECKPOINT"
    wait_archived "$BIN15" "$PORT15"
    SIZE3=$(dataset_bytes "$BIN15" "$PORT15")
    timed grow-ceiling "$BIN15/pg_basebackup" -h "$WORK" -p "$PORT15" -U postgres -Ft -X none -c fast -D -
    rm -rf "$WORK/scratch"; pgkeep_init "$WORK/scratch"
    timed grow-pgkeep $(pk "$WORK/scratch") backup --full --pg "$CONN"
    rm -rf "$WORK/scratch"
    result "peak RSS of pgkeep backup (MiB)" "dataset $((SIZE / 1000000)) MB" "$((rss_full / 1024))" \
        "$(($(col 2 grow-pgkeep | maxof) / 1024))" MiB - "pgkeep column: dataset $((SIZE3 / 1000000)) MB (target: both at most 256, flat)"
    result "full backup of the $((SIZE3 / 1000000)) MB dataset, wall time (s)" "pg_basebackup to /dev/null" \
        "$(last grow-ceiling)" "$(last grow-pgkeep)" s 1.15 "one run each"
else
    result "peak RSS of pgkeep backup (MiB)" "-" - "$((rss_full / 1024))" MiB - "target: at most 256"
fi
result "peak RSS of pgkeep wal-push (MiB)" "-" - "$((rss_push / 1024))" MiB - "target: at most 64"
result "peak RSS of pgkeep restore (MiB)" "-" - "$((rss_restore / 1024))" MiB - ""
as_pg "$BIN15/pg_ctl" -D "$WORK/pg15" -m fast stop >/dev/null
rm -rf "$WORK/pg15" "$MAIN" "$WORK/pgbr-repo"

# 7. PostgreSQL 18: the server's own incremental backup (summarize_wal), full then incremental
# after the same write load, RUNS times, each pair in a new repository.
if [ "$PG18" = 1 ]; then
    say "PostgreSQL 18: building the dataset"
    pgkeep_config pg18 "$WORK/pgkeep-18-archive"
    pgkeep_init "$WORK/pgkeep-18-archive"
    start_cluster pg18 "$BIN18" "$PORT18" "summarize_wal = on"
    build_dataset "$BIN18" "$PORT18"
    wait_archived "$BIN18" "$PORT18"
    CONN18="host=$WORK port=$PORT18 user=postgres"
    for i in $(seq "$RUNS"); do
        rm -rf "$WORK/scratch"; pgkeep_init "$WORK/scratch"
        timed pg18-full $(pk "$WORK/scratch") backup --full --pg "$CONN18"
        full_bytes=$(pgkeep_stored "$WORK/scratch")
        as_pg "$BIN18/pgbench" -h "$WORK" -p "$PORT18" -n -c 4 -j 2 -T "$PGBENCH_SECONDS" postgres >/dev/null 2>&1
        timed pg18-incr $(pk "$WORK/scratch") backup --incremental-method server --pg "$CONN18"
        echo "$(($(pgkeep_stored "$WORK/scratch") - full_bytes)) $full_bytes" >> "$WORK/pg18-bytes"
        say "run $i: full $(last pg18-full) s, server incremental $(last pg18-incr) s"
    done
    rm -rf "$WORK/scratch"
    paste -d' ' <(col 1 pg18-full) <(col 1 pg18-incr) > "$WORK/pg18-pairs"
    result "PG18: incremental (server INCREMENTAL) after pgbench, wall time (s)" "pgkeep full of the same database" \
        "$(col 1 pg18-full | median)" "$(col 1 pg18-incr | median)" s 0.35 \
        "pairs: $(awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $1}' "$WORK/pg18-pairs"); new bytes $(awk '{printf "%s%.1f%%", (NR > 1 ? ", " : ""), 100 * $1 / $2}' "$WORK/pg18-bytes") of the full"
    as_pg "$BIN18/pg_ctl" -D "$WORK/pg18" -m fast stop >/dev/null
fi

# ---------------------------------------------------------------------------------------------
# The table: ratio = pgkeep / peer (lower is better, except for rates, where higher is).
table() {
    printf '| measurement | peer | peer | pgkeep | ratio | target | met | notes |\n'
    printf '|---|---|---|---|---|---|---|---|\n'
    awk -F'\t' '{
        ratio = "-"; met = "-"
        if ($3 != "-" && $3 + 0 > 0 && $4 + 0 > 0) {
            r = $4 / $3; ratio = sprintf("%.2fx", r)
            if ($6 ~ /min/) { t = $6 + 0; met = (r >= t) ? "yes" : "**no**"; tgt = sprintf("≥ %sx", t) }
            else if ($6 != "-") { t = $6 + 0; met = (r <= t) ? "yes" : "**no**"; tgt = sprintf("≤ %sx", t) }
            else tgt = "-"
        } else tgt = ($6 == "-" ? "-" : $6)
        printf "| %s | %s | %s %s | %s %s | %s | %s | %s | %s |\n", $1, $2, $3, $5, $4, $5, ratio, tgt, met, $7
    }' "$WORK/results.tsv"
}
machine() {
    local cpu mem
    cpu=$(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')
    mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    printf -- '- Machine: %s, %s cores (`nproc`), %s RAM, Linux %s\n' "$cpu" "$(nproc)" "$mem" "$(uname -r)"
    printf -- '- Software: PostgreSQL %s and %s, %s, %s, pgkeep %s (release build, `%s`)\n' \
        "$("$BIN15/postgres" --version | awk '{print $3}')" "$("$BIN18/postgres" --version 2>/dev/null | awk '{print $3}')" \
        "$(pgbackrest version)" "$(rustc --version | awk '{print "rustc " $2}')" \
        "$("$PGKEEP" --version | awk '{print $2}')" "$(git -C "$ROOT" rev-parse --short HEAD)"
    printf -- '- Dataset: pgbench scale %s plus %s rows of `bench_rows`: %s MB (sum of `pg_database_size`)\n' "$SCALE" "$ROWS" "$((SIZE / 1000000))"
    printf -- '- Host: %s of CPU time was stolen by other guests of the hypervisor during the run (steal in `/proc/stat`); under steal, ratios move by more than their margins\n' \
        "$(cpu_times | awk -v s0="${cpu0% *}" -v t0="${cpu0#* }" '{printf "%.1f%%", 100 * ($1 - s0) / ($2 - t0)}')"
    printf -- '- Runs: %s alternating runs per timed comparison, medians; write load `pgbench -c 4 -j 2 -T %s`\n' "$RUNS" "$PGBENCH_SECONDS"
    printf -- '- pgkeep: default settings (zstd level 1 for new repositories, AES-256-GCM, one worker per core), local repository; pgBackRest: `compress-type=zst`, `compress-level=1`, `repo1-cipher-type=aes-256-cbc`, `process-max=2`, local repository\n'
}
{
    printf '# pgkeep beside its peers: results of `benches/compare.sh`\n\n'
    printf 'Run started %s. Ratio = pgkeep / peer: below 1 pgkeep is faster or smaller, except for\n' "$started"
    printf 'rates (segments per second), where above 1 is better. "met" checks the target of the\n'
    printf 'performance issue. Absolute times vary with the machine'"'"'s load; the ratios come from\n'
    printf 'alternating runs in one session.\n\n'
    machine
    printf '\n'
    table
} > "$WORK/RESULTS.md"
if [ -f "$OUT" ] && grep -q '^## Analysis' "$OUT"; then
    # Keep the hand-written analysis below the generated part.
    sed -n '/^## Analysis/,$p' "$OUT" > "$WORK/analysis"
    printf '\n' >> "$WORK/RESULTS.md"; cat "$WORK/analysis" >> "$WORK/RESULTS.md"
fi
cp "$WORK/RESULTS.md" "$OUT"
printf '\n'; table
say "written to $OUT"
