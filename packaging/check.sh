#!/usr/bin/env bash
# CI check of espan's packaging (issue 7), after `cargo test` has built the dev
# binaries; exits non-zero if any part fails and ends with one summary line.
#   images  packaging/check-images.sh: build from the Containerfile without a
#           registry, run the linker, exporter and probe containers end to end
#   k8s     packaging/check-k8s.sh: kustomize, kubernetes-validate, checkov
#   nix     packaging/check-nix.sh: flake.nix parses, evaluates, matches the workspace
# Needs scripts/setup.sh to have run (setup.d/packaging.sh: venv, kubectl, nix-bin).
# Usage: packaging/check.sh [images|k8s|nix]...   (default: all three)
# Env: ESPAN_CHECK_IMAGES_ARGS, passed to check-images.sh (e.g. --no-cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
((${#parts[@]})) || parts=(images k8s nix)
passed=()
failed=()
for part in "${parts[@]}"; do
  case "$part" in
  images)
    # shellcheck disable=SC2206 # word splitting wanted: a list of flags
    cmd=(bash packaging/check-images.sh ${ESPAN_CHECK_IMAGES_ARGS:-})
    ;;
  k8s) cmd=(bash packaging/check-k8s.sh) ;;
  nix) cmd=(bash packaging/check-nix.sh) ;;
  *)
    echo "packaging/check.sh: unknown part '$part' (images, k8s, nix)" >&2
    exit 2
    ;;
  esac
  echo "== packaging: $part"
  start=$SECONDS
  if "${cmd[@]}"; then
    passed+=("$part ($((SECONDS - start))s)")
  else
    failed+=("$part ($((SECONDS - start))s)")
  fi
done

echo "== packaging summary: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
echo "packaging: ${#passed[@]} passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
