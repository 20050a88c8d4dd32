#!/usr/bin/env bash
# The demo: traces a real request through a two-tier app, end to end.
# Starts NATS (setup), the linker, the exporter (to a local OTLP/HTTP receiver),
# the probe, and the app (front → back, plain Python, no tracing code); sends
# one request; prints the linked trace as a tree and where it was exported.
# Everything stops when the script ends. Run as root (the probe loads eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/espan-target}"
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
source scripts/setup.sh

say() { printf '\n== %s\n' "$*"; }
say "building (the same build the tests use; cold: ~20 min, then seconds)"
cargo test --workspace --no-run -q 2>&1 | grep -v '^ *Executable' || true
bin="$CARGO_TARGET_DIR/debug"

work=$(mktemp -d /tmp/espan-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A private JetStream for the demo, so nothing of an earlier run is replayed.
nats_port=$(free_port)
"$ESPAN_NATS_SERVER" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" -c scripts/nats.conf >"$work/nats.log" 2>&1 &
pids+=($!)
nats="nats://127.0.0.1:$nats_port"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$nats_port) 2>/dev/null && break; sleep 0.1; done

say "OTLP/HTTP receiver (upstream opentelemetry-proto decoder) → $work/otlp.jsonl"
python3 services/exporter/tests/receivers/otlp_receiver.py --protocol http --out "$work/otlp.jsonl" >"$work/otlp.port" 2>"$work/otlp.log" &
pids+=($!)
for _ in $(seq 100); do grep -q PORT "$work/otlp.port" 2>/dev/null && break; sleep 0.1; done
otlp_port=$(awk '/PORT/ {print $2}' "$work/otlp.port")

linker_metrics=127.0.0.1:$(free_port)
linker_api=127.0.0.1:$(free_port)
say "linker (window 3s, sampling 1: keep every trace)"
"$bin/espan-linker" --nats-url "$nats" --db-path "$work/linker" --window 3s --sampling-rate 1 \
  --metrics-addr "$linker_metrics" --api-addr "$linker_api" --ack-wait 1s >"$work/linker.log" 2>&1 &
pids+=($!)
say "exporter → OTLP/HTTP http://127.0.0.1:$otlp_port"
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
  "$bin/espan-exporter" --nats-url "$nats" --metrics-addr "127.0.0.1:$(free_port)" >"$work/exporter.log" 2>&1 &
pids+=($!)

say "app: front :8081 → back :8082 (services named by OTEL_SERVICE_NAME, as the probe reads it)"
front_port=$(free_port); back_port=$(free_port)
OTEL_SERVICE_NAME=demo-back python3 integration/demo/two_tier.py back --port "$back_port" >"$work/back.log" 2>&1 &
pids+=($!)
OTEL_SERVICE_NAME=demo-front python3 integration/demo/two_tier.py front --port "$front_port" --back "127.0.0.1:$back_port" >"$work/front.log" 2>&1 &
pids+=($!)
for port in $front_port $back_port; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

say "probe (eBPF on socket tracepoints; traces the processes that set OTEL_SERVICE_NAME & co)"
probe_metrics_port=$(free_port)
"$bin/espan-probe" --trace-server "$nats" --metrics-addr "127.0.0.1:$probe_metrics_port" --batch-interval 100ms >"$work/probe.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do grep -q "probe running" "$work/probe.log" 2>/dev/null && break; sleep 0.2; done
sleep 1

say "request: curl http://127.0.0.1:$front_port/api/orders/42"
curl -s "http://127.0.0.1:$front_port/api/orders/42"; echo

say "waiting for the window (3s) to close the trace"
id=""
for _ in $(seq 40); do
  sleep 0.5
  id=$("$bin/espan-linker" --db-path "$work/linker" --api-addr "$linker_api" traces --since 5m --service demo-front 2>/dev/null |
    awk 'length($1) == 32 && $1 ~ /^[0-9a-f]+$/ {print $1; exit}')
  [ -n "$id" ] && break
done
if [ -z "$id" ]; then
  echo "no trace came out; logs in $work" >&2
  "$bin/espan-linker" --db-path "$work/linker" --api-addr "$linker_api" traces --since 5m >&2 || true
  curl -s "http://$linker_metrics/metrics" | grep -E '^espan_linker_(spans|traces|batches)' >&2 || true
  curl -s "http://127.0.0.1:$probe_metrics_port/metrics" | grep -E '^espan_probe_(spans|data|traced|batches)' >&2 || true
  exit 1
fi
say "the trace, from the linker's store (espan-linker trace $id)"
"$bin/espan-linker" --db-path "$work/linker" --api-addr "$linker_api" trace "$id"

for _ in $(seq 40); do [ -s "$work/otlp.jsonl" ] && break; sleep 0.25; done
say "exported: OTLP/HTTP to http://127.0.0.1:$otlp_port, decoded by the upstream receiver into $work/otlp.jsonl"
python3 - "$work/otlp.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    req = json.loads(line)["request"]
    for rs in req.get("resource_spans", []):
        attrs = {a["key"]: a["value"].get("string_value") for a in rs["resource"]["attributes"]}
        for ss in rs.get("scope_spans", []):
            for s in ss["spans"]:
                print(f'  {attrs.get("service.name")}: {s["kind"]} {s["name"]} trace {s["trace_id"]} span {s["span_id"]} parent {s.get("parent_span_id", "-")}')
PY
echo
echo "logs and data: $work"
