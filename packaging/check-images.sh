#!/usr/bin/env bash
# Proves the container images (built by build-images.sh from the Containerfile):
#  1. each image runs its binary with no shell in it (`--help`), and every variable
#     k8s/ sets for a service is one that service reads (packaging/k8s_vars.py);
#  2. on a Docker network of its own: a NATS JetStream container (espan-nats, FROM
#     scratch) and the linker container, run as k8s/ runs it (uid 65532, read-only
#     root, no capabilities, its store on a volume), connect and report /healthz;
#  3. an eSpan batch published to ESPANS comes back from the linker container as a
#     linked trace on TRACES (packaging/e2e.py);
#  4. the exporter container takes that trace from TRACES and POSTs it as OTLP/HTTP
#     to a receiver on this host's loopback; it runs on the host network to reach
#     that receiver, with NATS through the port the NATS container publishes on
#     127.0.0.1;
#  5. the probe container runs against the host's kernel (host PID, tracefs, bpffs
#     and BTF mounted), once privileged and once with the DaemonSet's grants
#     (see there for what this Docker can express), and reports /healthz;
#  6. with those grants it traces a real request on this host (curl to a python3
#     http.server), which comes out of the exporter as OTLP.
# Ports are published on 127.0.0.1 only. Containers, network and volume are
# removed at the end, whatever happened; the images stay.
#
# Usage: packaging/check-images.sh [--no-cargo | --no-build]
#   --no-cargo   build the images from the binaries already in $CARGO_TARGET_DIR/debug
#   --no-build   the images exist already
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${ESPAN_IMAGE_TAG:-dev}
venv=${ESPAN_PACKAGING_VENV:-$HOME/.cache/espan-packaging-venv}
py="$venv/bin/python"
run_id="espan-check-$$"
HEALTH_WAIT_S=90 # a liveness deadline for containers that are still starting
failures=0
passed=0
log() { printf '[check-images] %s\n' "$*" >&2; }
ok() { log "ok   $*"; passed=$((passed + 1)); }
fail() { log "FAIL: $*"; failures=$((failures + 1)); }

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  log "FAIL: no Docker daemon"
  exit 1
fi
[ -x "$py" ] || { log "FAIL: $py missing (scripts/setup.d/packaging.sh makes it)"; exit 1; }

work=$(mktemp -d)
containers=()
receiver_pid=
cleanup() {
  if [ -n "$receiver_pid" ]; then kill "$receiver_pid" 2>/dev/null || true; fi
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  docker network rm "$run_id" >/dev/null 2>&1 || true
  docker volume rm "$run_id-linker" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

case "${1:-}" in
--no-build) ;;
--no-cargo) bash packaging/build-images.sh --no-cargo || { log "FAIL: build-images.sh"; exit 1; } ;;
"") bash packaging/build-images.sh || { log "FAIL: build-images.sh"; exit 1; } ;;
*) log "unknown argument $1 (see the header of $0)"; exit 2 ;;
esac
ok "images built: $(for s in probe linker exporter nats; do
  printf 'espan-%s:%s %s  ' "$s" "$TAG" "$(docker image inspect -f '{{.Size}}' "espan-$s:$TAG" | awk '{printf "%.0fMB", $1/1e6}')"
done)"

# 1. No shell in the images: the entrypoint itself answers.
for s in probe linker exporter; do
  status=0
  docker run --rm "espan-$s:$TAG" --help >"$work/help" 2>&1 || status=$?
  if ((status == 0)) && grep -qi usage "$work/help"; then
    ok "espan-$s:$TAG --help"
  elif grep -qi usage "$work/help"; then
    fail "espan-$s:$TAG --help prints the usage but exits with status $status (should be 0)"
  else
    fail "espan-$s:$TAG --help (status $status): $(head -5 "$work/help")"
  fi
  if docker run --rm --entrypoint /bin/sh "espan-$s:$TAG" -c true >/dev/null 2>&1; then
    fail "espan-$s:$TAG has a shell"
  fi
done

# The variables k8s/ sets must be ones the services read (packaging/k8s_vars.py).
for kdir in k8s/base k8s/overlays/*/; do kubectl kustomize "$kdir" && echo ---; done >"$work/k8s.yaml" 2>"$work/kz.log" ||
  fail "kubectl kustomize: $(cat "$work/kz.log")"
for s in probe linker exporter; do
  docker run --rm "espan-$s:$TAG" --help >"$work/help-$s" 2>&1 || true
done
if unknown=$("$py" packaging/k8s_vars.py "$work/k8s.yaml" "$work"); then
  ok "every variable k8s/ sets is one its service reads (each image's --help lists them)"
else
  fail "k8s/ sets variables the services do not read: $unknown"
fi

# Published host port of a container port.
host_port() { docker port "$1" "$2/tcp" | head -1 | sed 's/.*://'; }
# Waits for /healthz on 127.0.0.1:$2 (container $1 for the logs).
await_health() {
  local name=$1 port=$2 deadline=$((SECONDS + HEALTH_WAIT_S)) code=
  while ((SECONDS < deadline)); do
    code=$(curl -s -o "$work/healthz" -w '%{http_code}' "http://127.0.0.1:$port/healthz" || true)
    [ "$code" = 200 ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
    sleep 0.5
  done
  log "$name: /healthz answered '${code:-nothing}': $(cat "$work/healthz" 2>/dev/null)"
  log "$name logs:"
  docker logs --tail 30 "$name" 2>&1 | sed 's/^/    /' >&2
  return 1
}
metrics_lines() { curl -s "http://127.0.0.1:$1/metrics" | grep -vc '^#' || true; }

# 2. NATS and the linker on a network of their own.
docker network create "$run_id" >/dev/null
# k8s/'s NATS has a user per service; their passwords, fresh for this run.
password() { "$py" -c 'import secrets; print(secrets.token_hex(16))'; }
probe_pw=$(password) linker_pw=$(password) exporter_pw=$(password)
docker volume create "$run_id-linker" >/dev/null
containers+=("$run_id-nats")
# With k8s/'s NATS config and its pod's restrictions (uid 10001, read-only root).
if ! docker run -d --name "$run_id-nats" --network "$run_id" --network-alias nats \
  -p 127.0.0.1::4222 -p 127.0.0.1::8222 --user 10001:10001 --read-only --cap-drop ALL \
  --security-opt no-new-privileges --tmpfs /data:rw,uid=10001,gid=10001 -e POD_NAME=espan-nats-0 \
  -e ESPAN_NATS_PROBE_PASSWORD="$probe_pw" -e ESPAN_NATS_LINKER_PASSWORD="$linker_pw" \
  -e ESPAN_NATS_EXPORTER_PASSWORD="$exporter_pw" \
  -v "$PWD/k8s/components/nats/config/nats.conf:/etc/nats/nats.conf:ro" \
  "espan-nats:$TAG" --config /etc/nats/nats.conf >/dev/null; then
  fail "the NATS container did not start"
  log "$passed passed, $failures failed"
  exit 1
fi
nats_mon=$(host_port "$run_id-nats" 8222)
deadline=$((SECONDS + HEALTH_WAIT_S))
until curl -sf "http://127.0.0.1:$nats_mon/healthz?js-enabled-only=true" >/dev/null; do
  if ((SECONDS > deadline)); then
    fail "NATS (k8s/components/nats/config/nats.conf) not healthy"
    docker logs --tail 20 "$run_id-nats" 2>&1 | sed 's/^/    /' >&2
    log "$passed passed, $failures failed"
    exit 1
  fi
  sleep 0.3
done
ok "NATS container healthy with k8s/'s nats.conf (JetStream on, a user per service, uid 10001, read-only root)"
nats_port=$(host_port "$run_id-nats" 4222)
nats_url="nats://127.0.0.1:$nats_port"

containers+=("$run_id-linker")
docker run -d --name "$run_id-linker" --network "$run_id" -p 127.0.0.1::9530 \
  --user 65532:65532 --read-only --cap-drop ALL --security-opt no-new-privileges \
  -v "$run_id-linker:/var/lib/espan" \
  -e ESPAN_NATS_URL=nats://nats:4222 -e ESPAN_METRICS_ADDR=0.0.0.0:9530 \
  -e ESPAN_NATS_USER=linker -e ESPAN_NATS_PASSWORD="$linker_pw" \
  -e ESPAN_LINKER_NAME=check -e ENV_INPUT_EBPFTRACE_WINDOW=1s \
  -e ENV_INPUT_EBPFTRACE_SAMPLING_RATE=1 -e ESPAN_FLUSH_INTERVAL=100ms \
  "espan-linker:$TAG" >/dev/null || fail "the linker container did not start"
linker_port=$(host_port "$run_id-linker" 9530 2>/dev/null || true)
linker_ok=0
if [ -n "$linker_port" ] && await_health "$run_id-linker" "$linker_port"; then
  ok "linker container healthy on its network (NATS at nats:4222, read-only root, uid 65532, no capabilities); /metrics: $(metrics_lines "$linker_port") samples"
  linker_ok=1
else
  fail "linker container did not become healthy"
fi

# 4 (started first so its consumer is there before the trace): the exporter.
mkdir -p "$work/otlp"
"$py" packaging/e2e.py otlp-receiver "$work/otlp.port" "$work/otlp" &
receiver_pid=$!
for _ in $(seq 100); do [ -s "$work/otlp.port" ] && break; sleep 0.1; done
otlp_port=$(cat "$work/otlp.port")
exporter_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
containers+=("$run_id-exporter")
docker run -d --name "$run_id-exporter" --network host \
  --user 65532:65532 --read-only --cap-drop ALL --security-opt no-new-privileges \
  -e ESPAN_NATS_URL="$nats_url" -e ESPAN_EXPORTER_METRICS_ADDR="127.0.0.1:$exporter_port" \
  -e ESPAN_NATS_USER=exporter -e ESPAN_NATS_PASSWORD="$exporter_pw" \
  -e OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" \
  -e OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf -e OTEL_EXPORTER_OTLP_COMPRESSION=none \
  -e ESPAN_EXPORTER_DURABLE_PREFIX=check \
  "espan-exporter:$TAG" >/dev/null || fail "the exporter container did not start"
exporter_ok=0
if await_health "$run_id-exporter" "$exporter_port"; then
  ok "exporter container healthy (NATS through 127.0.0.1:$nats_port); /metrics: $(metrics_lines "$exporter_port") samples"
  exporter_ok=1
else
  fail "exporter container did not become healthy"
fi

# 3. eSpans in, a trace out of the linker container.
nonce="n$$x$RANDOM"
trace_ok=0
if ((linker_ok)); then
  if CHECK_PROBE_PASSWORD="$probe_pw" CHECK_LINKER_PASSWORD="$linker_pw" \
    "$py" packaging/e2e.py linker-roundtrip "$nats_url" "$nonce"; then
    ok "linker container linked a published eSpan batch into a trace on TRACES"
    trace_ok=1
  else
    fail "no linked trace from the linker container"
    docker logs --tail 30 "$run_id-linker" 2>&1 | sed 's/^/    /' >&2
  fi
fi
if ((trace_ok && exporter_ok)); then
  if "$py" packaging/e2e.py await-otlp "$work/otlp" "$nonce" 60; then
    ok "exporter container delivered that trace over OTLP/HTTP"
  else
    fail "exporter container did not deliver the trace"
    docker logs --tail 30 "$run_id-exporter" 2>&1 | sed 's/^/    /' >&2
  fi
fi

# 6. Zero-code, through every container: the probe (selecting processes by an
# environment variable only this run sets) sees curl call a python3 http.server on
# this host's loopback; the linker links the two eSpans; the exporter delivers the
# trace, whose path is unique to this run, to the OTLP receiver.
real_request_trace() {
  local probe=$1 port docroot path server_pid
  docroot="$work/www"
  path="espan-check-real-$nonce"
  mkdir -p "$docroot" && echo hello >"$docroot/$path"
  port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env "$probe_var=check-server" python3 -m http.server "$port" --bind 127.0.0.1 \
    --directory "$docroot" >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  # The shell waits so that the probe has selected the process before curl runs.
  env "$probe_var=check-client" sh -c "sleep 0.5; exec curl -s -o /dev/null http://127.0.0.1:$port/$path" ||
    fail "curl to the traced http.server failed"
  if "$py" packaging/e2e.py await-otlp "$work/otlp" "$path" 90; then
    ok "a real request (curl -> python3 http.server) seen by the probe container came out of the exporter container as OTLP"
  else
    fail "the real request's trace did not reach the OTLP receiver"
    docker logs --tail 20 "$probe" 2>&1 | sed 's/^/    /' >&2
    curl -s "http://127.0.0.1:$probe_port/metrics" | grep -v '^#' | sed 's/^/    /' >&2
  fi
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# 5. The probe against the host's kernel. Docker 20.10 knows neither CAP_BPF nor
# CAP_PERFMON by name, so the DaemonSet's list is tried in its older-kernel form:
# CAP_SYS_ADMIN stands for both (the kernel accepts it for bpf() and
# perf_event_open()). A sandbox without CAP_SYS_RESOURCE in its bounding set (this
# machine) can grant neither --privileged nor that capability: then "privileged"
# is every capability the machine has, without seccomp and AppArmor.
probe_mounts=(-v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/fs/bpf:/sys/fs/bpf
  -v /sys/kernel/btf:/sys/kernel/btf:ro)
probe_var="ESPAN_CHECK_$$"
probe_env=(-e ENV_INPUT_EBPF_TRACE_SERVER=nats:4222 -e ENV_INPUT_EBPF_METRICS_ADDR=0.0.0.0:9531
  -e ENV_INPUT_EBPF_HOST=check-probe -e "ENV_INPUT_EBPF_TRACE_ENV_LIST=$probe_var"
  -e ENV_INPUT_EBPF_BATCH_INTERVAL=50ms -e ESPAN_NATS_USER=probe -e "ESPAN_NATS_PASSWORD=$probe_pw")
bounding=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
has_sys_resource=$(((0x$bounding >> 24) & 1))
probe_mem=
for mode in privileged daemonset-grants; do
  if [ "$mode" = privileged ]; then
    if ((has_sys_resource)); then
      grants=(--privileged)
    else
      mode="privileged-but-CAP_SYS_RESOURCE"
      grants=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
        --security-opt apparmor=unconfined)
    fi
  else
    grants=(--cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH
      --security-opt seccomp=unconfined --security-opt no-new-privileges --read-only)
    ((has_sys_resource)) && grants+=(--cap-add SYS_RESOURCE)
  fi
  name="$run_id-probe-${mode%%-*}"
  containers+=("$name")
  if ! docker run -d --name "$name" --network "$run_id" -p 127.0.0.1::9531 --pid=host --user 0:0 \
    "${grants[@]}" "${probe_mounts[@]}" "${probe_env[@]}" "espan-probe:$TAG" >"$work/run" 2>&1; then
    fail "probe container ($mode) did not start: $(cat "$work/run")"
    continue
  fi
  probe_port=$(host_port "$name" 9531)
  if await_health "$name" "$probe_port"; then
    ok "probe container ($mode, --pid=host) healthy against the host kernel; /metrics: $(metrics_lines "$probe_port") samples"
    if [ "$mode" = daemonset-grants ] && ((trace_ok && exporter_ok)); then
      real_request_trace "$name"
    fi
    probe_mem=$(docker stats --no-stream --format '{{.MemUsage}}' "$name" | sed 's| /.*||')
  else
    fail "probe container ($mode) did not become healthy"
  fi
  docker rm -f "$name" >/dev/null 2>&1 || true
done

# Memory in use after the run (a sizing hint for k8s/, not a test).
mem() { docker stats --no-stream --format '{{.MemUsage}}' "$1" 2>/dev/null | sed 's| /.*||'; }
log "memory after the run: linker $(mem "$run_id-linker"), exporter $(mem "$run_id-exporter"), probe ${probe_mem:-?}, nats $(mem "$run_id-nats")"
log "$passed passed, $failures failed"
((failures == 0))
