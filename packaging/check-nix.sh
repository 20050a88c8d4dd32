#!/usr/bin/env bash
# Checks flake.nix as far as this machine can: Nix (Debian's nix-bin) is here but
# nothing can be fetched, so no input (nixpkgs, crane, rust-overlay) is available
# and nothing is built. What is checked:
#  1. the file parses (`nix-instantiate --parse`; the flake avoids `with`, so an
#     unbound name anywhere is a parse error too);
#  2. its outputs evaluate, with stand-in inputs, far enough to list them
#     (Nix is lazy: names of packages/apps/devShells need no nixpkgs);
#  3. those lists match the workspace: a package espan-X, an image image-X and an
#     app X for every workspace binary named after its package (cargo metadata).
#  4. the toolchain pins agree across the probe's build.rs, flake.nix and the
#     Containerfile's build stage.
# Not run here: `nix flake check`, `nix build`, `nix run`, `nix develop`.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[check-nix] %s\n' "$*" >&2; }
command -v nix-instantiate >/dev/null || { log "FAIL: nix-instantiate not found (apt-get install nix-bin)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NIX_STATE_DIR="$work/state" NIX_LOG_DIR="$work/log" NIX_STORE_DIR="$work/store"

nix-instantiate --parse flake.nix >/dev/null || { log "FAIL: flake.nix does not parse"; exit 1; }
log "ok   flake.nix parses"

cat >"$work/eval.nix" <<'EOF'
let
  flake = import ../flake.nix;
  # The few nixpkgs.lib functions the flake calls before any package is built.
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    mapAttrs' = f: set: builtins.listToAttrs (map (n: f n set.${n}) (builtins.attrNames set));
  };
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = { inherit lib; };
    crane = { };
    rust-overlay = { };
  };
  names = attr: builtins.mapAttrs (_: builtins.attrNames) outputs.${attr};
in
{
  inputs = builtins.mapAttrs (_: i: i.url) flake.inputs;
  packages = names "packages";
  apps = names "apps";
  devShells = names "devShells";
  appTypes = builtins.mapAttrs (_: apps: builtins.mapAttrs (_: a: a.type) apps) outputs.apps;
}
EOF
# eval.nix imports ../flake.nix: put it one level below the checkout's root.
mkdir -p "$work/x" && mv "$work/eval.nix" "$work/x/eval.nix" && cp flake.nix "$work/flake.nix"
if ! nix-instantiate --eval --strict --json "$work/x/eval.nix" >"$work/outputs.json" 2>"$work/err"; then
  log "FAIL: flake outputs do not evaluate:"
  cat "$work/err" >&2
  exit 1
fi

cargo metadata --no-deps --format-version 1 >"$work/metadata.json"
python3 - "$work/outputs.json" "$work/metadata.json" <<'EOF'
import json, sys
out = json.load(open(sys.argv[1]))
meta = json.load(open(sys.argv[2]))
# Services: workspace packages espan-X with a binary espan-X (helpers such as
# espan-probe-bench are not shipped).
services = sorted(
    p["name"][len("espan-"):]
    for p in meta["packages"]
    if p["name"].startswith("espan-")
    and any(t["name"] == p["name"] and "bin" in t["kind"] for t in p["targets"])
)
problems = []
if not services:
    problems.append("cargo metadata lists no service binaries")
for system in ("x86_64-linux", "aarch64-linux"):
    pkgs = set(out["packages"].get(system, []))
    apps = set(out["apps"].get(system, []))
    want_pkgs = {f"espan-{s}" for s in services} | {f"image-{s}" for s in services} | {"default"}
    if pkgs != want_pkgs:
        problems.append(f"{system}: packages {sorted(pkgs)} != workspace {sorted(want_pkgs)}")
    if apps != set(services):
        problems.append(f"{system}: apps {sorted(apps)} != services {services}")
    if any(t != "app" for t in out["appTypes"].get(system, {}).values()):
        problems.append(f"{system}: an app is not of type app")
    if "default" not in out["devShells"].get(system, []):
        problems.append(f"{system}: no default devShell")
for name, url in out["inputs"].items():
    if not url.startswith("github:"):
        problems.append(f"input {name}: unexpected url {url}")
if problems:
    for p in problems:
        print(f"[check-nix] FAIL: {p}", file=sys.stderr)
    sys.exit(1)
print(f"[check-nix] ok   outputs evaluate: packages espan-/image- for {', '.join(services)}, "
      f"apps {', '.join(services)}, devShells.default (x86_64-linux, aarch64-linux)", file=sys.stderr)
EOF
# 4. The toolchain pins agree: the probe's build.rs, the flake and the
# Containerfile's build stage name the same nightly; the Rust image is the
# workspace's rust-version.
pinned=$(grep -o 'nightly-[0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}' services/probe/build.rs | head -1)
flake_nightly=$(grep -o 'rust-bin\.nightly\."[0-9-]*"' flake.nix | grep -o '[0-9]\{4\}-[0-9-]*')
dist_nightly=$(grep -o '^  nightly="nightly-[0-9-]*"' packaging/container-dist.sh | grep -o 'nightly-[0-9-]*')
rust_version=$(grep -o '^rust-version = "[0-9.]*"' Cargo.toml | grep -o '[0-9.]*')
rust_image=$(grep -o '^ARG RUST_IMAGE=.*rust:[0-9.]*' Containerfile | grep -o '[0-9.]*$')
if [ -n "$pinned" ] && [ "nightly-$flake_nightly" = "$pinned" ] && [ "$dist_nightly" = "$pinned" ] &&
  [ -n "$rust_version" ] && [ "$rust_image" = "$rust_version" ]; then
  log "ok   toolchains agree: $pinned (probe build.rs, flake.nix, Containerfile), rust $rust_version (Cargo.toml, Containerfile)"
else
  log "FAIL: toolchain pins differ: build.rs '$pinned', flake 'nightly-$flake_nightly', container-dist.sh '$dist_nightly'; rust-version '$rust_version', Containerfile rust image '$rust_image'"
  exit 1
fi
log "not run here (no network for inputs): nix flake check, nix build, nix run, nix develop"
