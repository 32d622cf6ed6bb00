#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what a fresh machine lacks (the S3-compatible
# test server), then checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "fuzz smoke run (every cargo-fuzz target, briefly; a crash fails the suite)"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" FUZZ_SECONDS="${FUZZ_SECONDS:-5}" bash scripts/fuzz-smoke.sh
