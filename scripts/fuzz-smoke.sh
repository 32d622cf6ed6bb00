#!/usr/bin/env bash
# Smoke-runs every cargo-fuzz target in fuzz/ for a few seconds each, on the stable toolchain.
#
#   scripts/fuzz-smoke.sh                  # every target, 10 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh  # longer
#   scripts/fuzz-smoke.sh header body      # only these targets
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 10)
#   FUZZ_SANITIZER  address (default), leak or none (none runs roughly 2-3x faster)
#   FUZZ_TIMEOUT    seconds one input may take before libFuzzer calls it a hang (default 20)
#   FUZZ_TARGET_DIR cargo target directory (default fuzz/target); builds with different
#                   sanitizers overwrite each other in one directory
#   FUZZ_MALLOC_MB  largest single allocation, MiB (default 256): a decoder that believes a
#                   forged length or size field fails here as an out-of-memory crash
#
# scripts/test.sh runs it with FUZZ_SANITIZER=none and FUZZ_SECONDS=5 to fit CI's budget.
#
# Installs cargo-fuzz (pinned) if missing, builds all targets, seeds fuzz/corpus/<target>/
# from format-spec/vectors/*.json, runs each target, prints one summary line per target and
# exits non-zero if any target crashed, hung or failed to build. Reproducers land in
# fuzz/artifacts/<target>/, full logs in fuzz/target/smoke-logs/.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-20}
FUZZ_MALLOC_MB=${FUZZ_MALLOC_MB:-256}
target_dir=()
[ -n "${FUZZ_TARGET_DIR:-}" ] && target_dir=(--target-dir "$FUZZ_TARGET_DIR")

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# From inside fuzz/, so that fuzz/.cargo/config.toml (CFLAGS for the C dependencies) applies.
cd "$root/fuzz"

# cargo-fuzz passes nightly-only flags (-Zsanitizer=...); RUSTC_BOOTSTRAP=1 makes the stable
# compiler accept them. The stable toolchain ships the ASan runtime, so the default sanitizer
# works as is.
export RUSTC_BOOTSTRAP=1

# scripts/install-test-deps.sh installs it there when it is not on PATH.
export PATH="$root/.tools/cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo"
    cargo install --locked --version "$CARGO_FUZZ_VERSION" --root "$root/.tools/cargo" cargo-fuzz
fi
echo "fuzz-smoke: $(cargo fuzz --version), sanitizer $FUZZ_SANITIZER, ${FUZZ_SECONDS}s per target"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One cargo invocation builds every target (default features, so with the engine): the
# runs below then reuse it instead of rebuilding per target.
start=$SECONDS
failed=()
if ! cargo fuzz build -s "$FUZZ_SANITIZER" "${target_dir[@]}"; then
    echo "fuzz-smoke: FAIL: the fuzz targets do not build" >&2
    exit 1
fi
echo "fuzz-smoke: built in $((SECONDS - start))s"

# Seed corpus from the committed test vectors (hex fields decoded to raw bytes). Targets whose
# input never appears in the clear in a vector (index, lock, cluster plaintexts, bodies) get
# small hand-built seeds with the vectors' values. Files are named by content, so reruns add
# nothing twice.
if command -v python3 >/dev/null 2>&1; then
    python3 - "$root" <<'PY'
import hashlib, json, os, shutil, struct, subprocess, sys
from pathlib import Path

root = Path(sys.argv[1])
vec = {p.stem: json.loads(p.read_text()) for p in (root / "format-spec/vectors").glob("*.json")}
h = bytes.fromhex

def seed(target, data):
    d = root / "fuzz/corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)

def s(b):  # wire `string`/`bytes`: u32 length, then the bytes
    return struct.pack("<I", len(b)) + b

objects = [h(v[k]) for v in vec.values() for k in ("object", "cluster_object", "lock_object") if k in v]
plaintexts = [h(v["plaintext"]) for v in vec.values() if "plaintext" in v]
plaintexts += [h(c) for c in vec.get("pack", {}).get("chunks", [])]

for o in objects:
    seed("header", o)
if "manifest-object" in vec:
    seed("manifest", h(vec["manifest-object"]["plaintext"]))
for name in ("dump-object", "dump-all-object", "dump-directory-object"):
    if name in vec:
        seed("dump_manifest", h(vec[name]["plaintext"]))
if "config-object" in vec:
    seed("repo_config", h(vec["config-object"]["plaintext"]))
if "keyfile" in vec:
    seed("key_file", h(vec["keyfile"]["object"]))
if "pack" in vec:
    # Sealed under the vectors' master key, not the targets' fixed keys: exercises everything
    # up to authentication of the table of contents.
    seed("read_pack", h(vec["pack"]["object"]))
for name in ("chunk-unit-raw", "chunk-unit-zstd"):
    if name in vec:
        seed("open_chunk", h(vec[name]["chunk_id"]) + h(vec[name]["unit"]))

zstd = shutil.which("zstd")
for p in plaintexts:
    seed("chunker", p)
    for mode in (0x00, 0x05, 0x0e):  # level 0/1/2 and a few kinds
        seed("sealed_object", bytes([mode, 0x20, 0x00, 0x01]) + p)
    seed("body", bytes([0, 0]) + struct.pack("<Q", len(p)) + p)
    if zstd and len(p) <= 64 * 1024:
        frame = subprocess.run([zstd, "-3", "-q", "-c"], input=p, capture_output=True, check=True).stdout
        seed("body", bytes([1, 3]) + struct.pack("<Q", len(p)) + frame)

# The index segment listing the vector pack's two chunk units (11 and 300 bytes, stored raw).
if "pack" in vec:
    pack = h(vec["pack"]["object"])
    entries = [(16, 24 + 10 + 11 + 16, 11), (16 + 61, 24 + 10 + 300 + 16, 300)]
    body = struct.pack("<I", 1) + h(vec["pack"]["pack_id"]) + struct.pack("<QI", len(pack), len(entries))
    for i, (off, stored, raw) in enumerate(entries):
        body += bytes([0x30 + i]) * 32 + struct.pack("<III", off, stored, raw)
    seed("index_segment", body)
seed("index_segment", struct.pack("<I", 0))
# The vectors' cluster binding and lock (tests/vectors.rs, lock_and_cluster_objects).
seed("cluster_binding", s(b"main") + struct.pack("<QIq", 7_300_000_000_000_000_001, 180_001, 1_795_000_000))
# Replication client: a walsender session's messages, fed in 7-byte pieces.
def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body
session = (msg(b"R", struct.pack(">i", 0)) + msg(b"S", b"server_version\x0015.4\x00")
           + msg(b"T", struct.pack(">h", 1) + b"systemid\x00" + bytes(18))
           + msg(b"D", struct.pack(">hi", 1, 3) + b"123") + msg(b"C", b"IDENTIFY_SYSTEM\x00")
           + msg(b"Z", b"I") + msg(b"W", bytes(3))
           + msg(b"d", b"w" + struct.pack(">QQq", 0x3000000, 0x3000010, 7) + bytes(16))
           + msg(b"d", b"k" + struct.pack(">Qqb", 0x3000010, 8, 1))
           + msg(b"d", b"nbase.tar\x00\x00") + msg(b"d", b"p" + struct.pack(">Q", 42))
           + msg(b"E", b"SERROR\x00C42710\x00Mslot exists\x00\x00") + msg(b"c", b""))
seed("backend_message", bytes([6]) + session)
# Tar reader: archives as PostgreSQL's and GNU tar's writers make them (Python's tarfile).
import io, tarfile
for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in (("PG_VERSION", b"15\n"), ("base/1/" + "x" * 90 + "/" + "z" * 60, b"y" * 700)):
            ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1700000000
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("base"); ti.type = tarfile.DIRTYPE; tf.addfile(ti)
        ti = tarfile.TarInfo("pg_tblspc/16400"); ti.type = tarfile.SYMTYPE; ti.linkname = "/srv/ts"; tf.addfile(ti)
    seed("tar_reader", bytes([0x0e]) + buf.getvalue())
# Connection strings and a .pgpass file.
for c in (b"host=localhost port=5432 user=postgres dbname=postgres sslmode=require",
          b"postgresql://user:pa%20ss@[::1]:5433,db2/db?sslmode=verify-full&application_name=x",
          b"host='/var/run/postgresql' password='it\\'s' connect_timeout=10",
          b"localhost:5432:postgres:postgres:secret\n*:*:replication:backup:pw\\:x\n"):
    seed("conninfo", c)
# WAL names, LSNs, sizes and a history file.
seed("wal_names", b"000000010000000000000002\n000000020000000100000003.partial\n"
     b"00000002.history\n000000010000000000000002.00000028.backup\n16MB\n8192\n1GB\n"
     b"0/3000000\nFFFFFFFF/FFFFFFFF\n1\t0/3000000\tno recovery target specified\n"
     b"2\t1/0\tbefore 2000-01-01\n")
# A segment's meta (BLAKE3, segment facts, an empty summary) and a history file's (SHA-256).
seed("wal_meta", bytes([1]) + struct.pack("<Q", 16 << 20) + bytes([0x5a]) * 32
     + bytes([1]) + struct.pack("<QII", 7_300_000_000_000_000_001, 16 << 20, 18)
     + bytes([1]) + struct.pack("<QQB", 3, 0x3000ff8, 0) + struct.pack("<I", 0) + bytes([0, 0]))
seed("wal_meta", bytes([0]) + struct.pack("<Q", 42) + bytes([0xa5]) * 32 + bytes([0, 0]))
seed("lock_info", bytes([1]) + s(b"db1") + struct.pack("<I", 4242) + s(b"prune")
     + struct.pack("<qq", 1_795_000_000_000_000, 1_795_000_030_000_000))
PY
else
    echo "fuzz-smoke: python3 not found, running without a seed corpus"
fi

logs=target/smoke-logs
mkdir -p "$logs"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$logs/$t.log
    # Committed reproducers of known findings are replayed first (read, never written).
    dirs=("corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    if cargo fuzz run -s "$FUZZ_SANITIZER" "${target_dir[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" \
        -malloc_limit_mb="$FUZZ_MALLOC_MB" -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAIL
        failed+=("$t")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2 || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    line=$(printf '%-4s %-16s runs %-10s exec/s %-8s cov %-5s corpus %s' \
        "$status" "$t" "${runs:--}" "${rate:--}" "${cov:--}" "$corpus")
    if [ "$status" = FAIL ]; then
        # A panic's message is on the line after "panicked at"; sanitizer and build errors
        # fit on one line.
        what=$(grep -m1 -A1 -E "panicked at" "$log" | tr '\n' ' ' || true)
        [ -n "$what" ] || what=$(grep -m1 -E "ERROR: libFuzzer|ERROR: AddressSanitizer|^error" "$log" || true)
        unit=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n1 | cut -d' ' -f5 || true)
        line+="  ${what:-see $log}${unit:+  reproducer $unit}"
    fi
    echo "$line"
done

echo "fuzz-smoke: ${#targets[@]} targets in $((SECONDS - start))s, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
