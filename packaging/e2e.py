"""The protocol side of packaging/check-images.sh (run with the packaging venv).

  e2e.py linker-roundtrip NATS_URL NONCE
      publishes a CLIENT and a SERVER span of the same call, each in a batch of
      its host's on espan.<host> (as k8s/'s probe user when CHECK_PROBE_PASSWORD
      is set), and waits for the linker's trace on TRACES (read as its linker
      user, CHECK_LINKER_PASSWORD): one trace holding both spans, the server's
      parent being the client.
  e2e.py otlp-receiver PORT_FILE OUT_DIR
      an OTLP/HTTP receiver on 127.0.0.1 (free port written to PORT_FILE) that
      stores each POST /v1/traces body in OUT_DIR and answers 200.
  e2e.py await-otlp OUT_DIR NONCE SECONDS
      waits until a stored body holds the NONCE (the span's path), i.e. the
      exporter delivered the trace.

espan.proto is compiled with grpcio-tools' protoc, so the messages are the real
ones, not a copy.
"""

import asyncio
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "services/espan/proto"
# Liveness deadlines, not measurements: the containers may still be starting.
STREAM_WAIT_S = 60
TRACE_WAIT_S = 90


def die(msg):
    print(f"[e2e] FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_proto():
    out = pathlib.Path(tempfile.mkdtemp(prefix="espan-proto-"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
         str(PROTO_DIR / "espan/v1/espan.proto")],
        check=True,
    )
    sys.path.insert(0, str(out))
    from espan.v1 import espan_pb2  # noqa: E402

    return espan_pb2


def make_batch(pb, nonce):
    now = time.time_ns()
    client_id, server_id = random.getrandbits(63) | 1, random.getrandbits(63) | 1
    req_seq, resp_seq = random.getrandbits(32), random.getrandbits(32)
    a = pb.Endpoint(ip=bytes([10, 0, 0, 1]), port=40000)
    b = pb.Endpoint(ip=bytes([10, 0, 0, 2]), port=8080)
    http = pb.Http(method="GET", path=f"/espan-check/{nonce}", version="1.1", status=200)
    client = pb.ESpan(
        span_id=client_id, kind=pb.SPAN_KIND_CLIENT, protocol=pb.PROTOCOL_HTTP1, local=a,
        remote=b, req_seq=req_seq, resp_seq=resp_seq, start_ns=now, end_ns=now + 3_000_000,
        pid=100, tid=100, comm="frontend", service="check-frontend", http=http, bytes_in=120,
        bytes_out=80, host="check-host-a",
    )
    server = pb.ESpan(
        span_id=server_id, kind=pb.SPAN_KIND_SERVER, protocol=pb.PROTOCOL_HTTP1, local=b,
        remote=a, req_seq=req_seq, resp_seq=resp_seq, start_ns=now + 500_000,
        end_ns=now + 2_500_000, pid=200, tid=200, comm="backend", service="check-backend",
        http=http, bytes_in=80, bytes_out=120, host="check-host-b",
    )
    # One batch per host, each on its host's subject: the linker refuses a
    # batch that carries another host's spans.
    batches = [
        pb.ESpanBatch(version=1, host=span.host, boot_id=random.getrandbits(63), seq=1,
                      spans=[span])
        for span in (client, server)
    ]
    return batches, client_id, server_id


async def linker_roundtrip(url, nonce):
    import nats
    from nats.js.errors import NotFoundError

    pb = load_proto()
    # As k8s/'s NATS users when the server has them (CHECK_*_PASSWORD): the
    # probe's to publish eSpans, the linker's to read TRACES.
    def login(user):
        password = os.environ.get(f"CHECK_{user.upper()}_PASSWORD")
        return {"user": user, "password": password} if password else {}
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3, **login("linker"))
    probe = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3, **login("probe"))
    js = nc.jetstream()
    # The linker creates the streams when it starts.
    deadline = time.monotonic() + STREAM_WAIT_S
    while True:
        try:
            await js.stream_info("ESPANS")
            await js.stream_info("TRACES")
            break
        except NotFoundError:
            if time.monotonic() > deadline:
                die(f"streams ESPANS/TRACES not created within {STREAM_WAIT_S}s")
            await asyncio.sleep(0.5)
    sub = await js.subscribe("trace.>", stream="TRACES", ordered_consumer=True)
    batches, client_id, server_id = make_batch(pb, nonce)
    for batch in batches:
        ack = await probe.jetstream().publish(
            f"espan.{batch.host}", batch.SerializeToString(),
            headers={"Nats-Msg-Id": f"{batch.host}/{batch.boot_id}/1"})
        print(f"[e2e] published 1 eSpan of {batch.host} to ESPANS (seq {ack.seq})",
              file=sys.stderr)
    await probe.close()
    deadline = time.monotonic() + TRACE_WAIT_S
    while time.monotonic() < deadline:
        try:
            msg = await sub.next_msg(timeout=2)
        except nats.errors.TimeoutError:
            continue
        traces = pb.TraceBatch.FromString(msg.data)
        for trace in traces.traces:
            ids = {ls.span.span_id: ls.parent_id for ls in trace.spans}
            if client_id in ids or server_id in ids:
                if set(ids) != {client_id, server_id}:
                    die(f"trace holds spans {sorted(ids)}, expected {client_id} and {server_id}")
                if ids[server_id] != client_id or ids[client_id] != 0:
                    die(f"parents wrong: {ids} (server's parent should be the client)")
                print(f"[e2e] linker published trace {trace.trace_id_high:016x}{trace.trace_id_low:016x}"
                      f" on {msg.subject}: client -> server linked", file=sys.stderr)
                await nc.close()
                return
    die(f"no trace with the published spans on TRACES within {TRACE_WAIT_S}s")


def otlp_receiver(port_file, out_dir):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            count[0] += 1
            name = out / f"{count[0]:04d}{self.path.replace('/', '_')}.bin"
            name.write_bytes(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = pathlib.Path(port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    os.replace(tmp, port_file)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


def await_otlp(out_dir, nonce, seconds):
    deadline = time.monotonic() + float(seconds)
    needle = nonce.encode()
    while time.monotonic() < deadline:
        for f in sorted(pathlib.Path(out_dir).glob("*.bin")):
            if "v1_traces" in f.name and needle in f.read_bytes():
                print(f"[e2e] exporter delivered the trace: POST /v1/traces ({f.stat().st_size} bytes)",
                      file=sys.stderr)
                return
        time.sleep(0.5)
    die(f"no OTLP request with the trace arrived within {seconds}s")


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "linker-roundtrip" and len(args) == 2:
        asyncio.run(linker_roundtrip(*args))
    elif cmd == "otlp-receiver" and len(args) == 2:
        otlp_receiver(*args)
    elif cmd == "await-otlp" and len(args) == 3:
        await_otlp(*args)
    else:
        die(f"bad arguments: {sys.argv[1:]}\n{__doc__}")


if __name__ == "__main__":
    main()
