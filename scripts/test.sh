#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/espan-target}"
export CARGO_TERM_COLOR=never
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
echo "== packaging (images, containers end to end, k8s manifests, flake)"
bash packaging/check.sh
