# The probe's toolchain (sourced by scripts/setup.sh; see /work/shared/design/toolchain.md):
# LLVM 22 for bpf-linker (Debian 12's llvm-22 matches nightly-2026-05-19's LLVM),
# the pinned nightly with rust-src for the bpf target, and the tools the probe's
# tests drive (curl, python3, redis-server, PostgreSQL 15, MariaDB; redis-py,
# psycopg, PyMySQL and MySQL Connector/Python come with the e2e venv of
# integration.sh). Debian starts system PostgreSQL and MariaDB servers; the
# tests run their own, so those are stopped.
apt_install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev libxml2-dev curl python3 redis-server postgresql mariadb-server
for unit in postgresql mariadb; do
  if systemctl is-active --quiet "$unit" 2>/dev/null; then systemctl stop "$unit" || true; fi
done

probe_nightly=nightly-2026-05-19
# The machine may carry that nightly as plain `nightly`; use the dated one otherwise.
if ! rustc +nightly --version 2>/dev/null | grep -q '2026-05-19' &&
  ! rustup toolchain list | grep -q "^$probe_nightly"; then
  log "rustup toolchain install $probe_nightly (rust-src)"
  rustup toolchain install "$probe_nightly" --profile minimal --component rust-src
fi
for tc in nightly "$probe_nightly"; do
  if rustup toolchain list | grep -q "^$tc"; then
    rustup component list --toolchain "$tc" --installed 2>/dev/null | grep -q '^rust-src' ||
      rustup component add rust-src --toolchain "$tc"
  fi
done

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo install bpf-linker (llvm-22)"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --locked --no-default-features --features llvm-22
fi

# The probe's kernel programs need tracefs (tracepoint ids and formats) and bpffs.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
