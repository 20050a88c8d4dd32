#!/bin/sh
# The Containerfile's `dist` stage: puts the three service binaries in $1/bin.
#
# DIST_FROM=source (a user's build, in the official Rust image): installs the
# probe's bpf toolchain (as scripts/setup.d/probe.sh does on a Debian 12 host) and
# runs a locked release build.
# DIST_FROM=prebuilt (packaging/build-images.sh, no registry): copies
# packaging/dist/bin/ as it is. That stage then runs in a FROM-scratch toolbox with
# only sh, mkdir and cp, so this branch uses nothing else.
set -eu
out=$1
services="espan-probe espan-linker espan-exporter"
mkdir -p "$out/bin" "$out/var/lib/espan"

case "${DIST_FROM:-source}" in
prebuilt)
  for bin in $services; do
    if [ ! -f "packaging/dist/bin/$bin" ]; then
      echo "container-dist: packaging/dist/bin/$bin missing (run packaging/build-images.sh)" >&2
      exit 1
    fi
    cp "packaging/dist/bin/$bin" "$out/bin/$bin"
  done
  ;;
source)
  nightly="nightly-2026-05-19"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev libxml2-dev >/dev/null
  rustup toolchain install "$nightly" --profile minimal --component rust-src
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --locked \
    --no-default-features --features llvm-22
  cargo build --release --locked -p espan-probe -p espan-linker -p espan-exporter --bins
  for bin in $services; do
    cp "target/release/$bin" "$out/bin/$bin"
    strip --strip-debug "$out/bin/$bin"
  done
  ;;
*)
  echo "container-dist: DIST_FROM must be source or prebuilt, not '$DIST_FROM'" >&2
  exit 1
  ;;
esac
