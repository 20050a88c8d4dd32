# shellcheck shell=bash
# What integration/ (the end-to-end tests and their app) needs, sourced by
# scripts/setup.sh: iproute2 and iptables for the test hosts (network
# namespaces, DNAT), redis-server (the app's cache), and a venv with the app's
# libraries — Flask, requests, redis-py and the upstream OpenTelemetry SDK with
# its Flask/requests/redis instrumentation, whose spans are the ground truth;
# the probe tests' clients and servers (database drivers, grpcio).
apt_install iproute2 iptables redis-server
# Debian starts a system redis on 6379; the tests run their own in a namespace.
if systemctl is-active --quiet redis-server 2>/dev/null; then systemctl stop redis-server || true; fi
e2e_venv=${ESPAN_E2E_VENV:-$HOME/.cache/espan-e2e-venv}
e2e_reqs="flask==3.1.3 requests==2.34.2 redis==8.1.0 opentelemetry-sdk==1.45.1 opentelemetry-instrumentation-flask==0.66b1 opentelemetry-instrumentation-requests==0.66b1 opentelemetry-instrumentation-redis==0.66b1 psycopg[binary]==3.3.9 PyMySQL==1.2.4 mysql-connector-python==26.10.0 grpcio==1.85.1"
if [ "$(cat "$e2e_venv/.espan-reqs" 2>/dev/null)" != "$e2e_reqs" ]; then
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "e2e app venv $e2e_venv: $e2e_reqs"
  [ -x "$e2e_venv/bin/python" ] || python3 -m venv "$e2e_venv"
  # shellcheck disable=SC2086
  "$e2e_venv/bin/pip" install --quiet --disable-pip-version-check $e2e_reqs
  echo "$e2e_reqs" >"$e2e_venv/.espan-reqs"
fi
export ESPAN_E2E_PYTHON=$e2e_venv/bin/python
