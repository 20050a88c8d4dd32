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
# The tests that load eBPF programs or make network namespaces need root; they
# are #[ignore]d so that a run without root counts them as not run, and run
# here when we are root (CI is).
if [ "$(id -u)" = 0 ]; then
  cargo test --workspace --no-fail-fast -- --include-ignored
else
  echo "not root: the eBPF and network-namespace tests are ignored (see the count below)"
  cargo test --workspace --no-fail-fast
fi
echo "== packaging (images, containers end to end, k8s manifests, flake)"
bash packaging/check.sh
