#!/usr/bin/env bash
# pgkeep end to end on a local repository, narrated: build, init, keys, store data twice
# (the second time deduplicates to nothing), list, read back and verify. Needs only cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Building pgkeep (release; the first build takes a few minutes)"
# Name both targets: with --example alone cargo would build only the example.
cargo build --release --locked --bin pgkeep --example store_files
PGKEEP=$PWD/target/release/pgkeep
STORE=$PWD/target/release/examples/store_files

WORK=$(mktemp -d /tmp/pgkeep-quickstart.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
umask 077
export PGKEEP_REPO="$WORK/repo"
# The passphrase lives in a private file; pgkeep never takes it on the command line.
head -c 24 /dev/urandom | base64 > "$WORK/passphrase"
export PGKEEP_PASSPHRASE_FILE="$WORK/passphrase"

say "Creating a repository at $PGKEEP_REPO"
run "$PGKEEP" init
run "$PGKEEP" key list

say "Adding a second passphrase (for a colleague or a break-glass envelope)"
head -c 24 /dev/urandom | base64 > "$WORK/second"
run "$PGKEEP" key add --label break-glass --new-passphrase-file "$WORK/second"
run "$PGKEEP" key list

say "Making test data: 32 MiB random, about 70 MiB of compressible table-like rows"
head -c $((32 << 20)) /dev/urandom > "$WORK/random.bin"
awk 'BEGIN { for (i = 1; i <= 1600000; i++)
  printf "%08d|customer-%d|%s|2026-11-%02d|%d\n", i, i % 5000, (i % 7 ? "active" : "closed"), i % 28 + 1, (i * 7919) % 100000 }' \
  > "$WORK/rows.txt"
ls -lh "$WORK/random.bin" "$WORK/rows.txt"

say "Storing both files as a backup (chunked, deduplicated, zstd, AES-256-GCM)"
run "$STORE" "$PGKEEP_REPO" "$WORK/random.bin" "$WORK/rows.txt"
du -sh "$PGKEEP_REPO"

say "Storing the same files again: nothing new is stored"
sleep 1
run "$STORE" "$PGKEEP_REPO" "$WORK/random.bin" "$WORK/rows.txt"
du -sh "$PGKEEP_REPO"

say "The backups in the repository"
run "$PGKEEP" list

say "Done. (pgkeep backup of a live PostgreSQL server arrives with the replication client.)"
