#!/usr/bin/env bash
# Validates k8s/: every kustomization (base, overlays/*) is rendered with
# `kubectl kustomize`, checked against the Kubernetes API schemas with
# kubernetes-validate (strict: unknown fields fail) for the oldest and newest
# versions espan targets, and scanned with checkov, which must report no failed
# check (each skip is an annotation with its reason, next to the resource).
# First it proves both checkers can fail, on a manifest that is wrong on purpose.
# The checkers run without a network (unshare -n) so they cannot phone home.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ESPAN_PACKAGING_VENV:-$HOME/.cache/espan-packaging-venv}
K8S_VERSIONS=(1.29.0 1.37.0)
PATH="$PATH:$venv/bin"
failures=0
log() { printf '[check-k8s] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; failures=$((failures + 1)); }

for tool in kubectl kubernetes-validate checkov; do
  command -v "$tool" >/dev/null || { log "FAIL: $tool not found (scripts/setup.d/packaging.sh installs it)"; exit 1; }
done
offline=()
unshare -n true 2>/dev/null && offline=(unshare -n)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

validate() { "${offline[@]}" kubernetes-validate --strict --quiet -k "$1" "$2" >"$work/kv.log" 2>&1; }
scan() {
  # --skip-download: no guidelines or policies from the vendor's platform.
  (cd "$(dirname "$1")" && "${offline[@]}" checkov -f "$(basename "$1")" --framework kubernetes \
    --compact --quiet --skip-download -o cli) >"$work/ck.log" 2>&1
}

# The checkers must be able to say no.
cat >"$work/wrong.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: wrong
spec:
  selector: {matchLabels: {app: wrong}}
  template:
    metadata: {labels: {app: wrong}}
    spec:
      containers:
        - name: c
          image: busybox:latest
          securityContext: {privileged: true}
          livenessProbes: {}
EOF
validate "${K8S_VERSIONS[-1]}" "$work/wrong.yaml" && fail "kubernetes-validate accepted an unknown field (livenessProbes)"
scan "$work/wrong.yaml" && fail "checkov passed a privileged container with a :latest image"

for kdir in k8s/base k8s/overlays/*/; do
  kdir=${kdir%/}
  name=$(echo "$kdir" | tr / -)
  out="$work/$name.yaml"
  if ! kubectl kustomize "$kdir" >"$out" 2>"$work/kz.log"; then
    fail "$kdir: kubectl kustomize: $(cat "$work/kz.log")"
    continue
  fi
  objects=$(grep -c '^kind:' "$out" || true)
  for v in "${K8S_VERSIONS[@]}"; do
    if validate "$v" "$out"; then
      log "ok   $kdir: $objects objects valid against Kubernetes $v"
    else
      fail "$kdir: kubernetes-validate $v"
      cat "$work/kv.log" >&2
    fi
  done
  if scan "$out"; then
    summary=$(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$work/ck.log" || true)
    log "ok   $kdir: checkov $summary"
  else
    fail "$kdir: checkov found problems"
    grep -E '^(Check|	FAILED|	File)' "$work/ck.log" >&2 || cat "$work/ck.log" >&2
  fi
done

if ((failures)); then
  log "$failures failure(s)"
  exit 1
fi
log "all k8s checks passed"
