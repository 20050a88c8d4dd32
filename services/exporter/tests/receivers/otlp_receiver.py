"""An OTLP trace receiver for espan's exporter tests, built only from upstream
code: the `opentelemetry-proto` package's generated messages and gRPC service,
grpcio, and the standard library's http.server.

It decodes every request with the upstream classes and appends one JSON line
per request to --out: {"accepted": bool, "at": seconds since the epoch,
"headers": {x-* headers or gRPC metadata}, "request": <the request as JSON>},
with trace/span ids turned from base64 into hex so the test can compare them.

--fail CODE:N answers the first N requests with CODE (HTTP status, or the
matching gRPC code) before accepting; N = -1 refuses every request.
--tls-cert/--tls-key serve over TLS; with --client-ca too, a client must
present a certificate that CA signed (mutual TLS).
Prints "PORT <n>" once listening.
"""

import argparse
import base64
import gzip
import json
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ID_FIELDS = ("trace_id", "span_id", "parent_span_id")
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def hex_ids(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids(item)
    return node


class Recorder:
    def __init__(self, out, fail_code, fail_count):
        self.out = open(out, "a", encoding="utf-8")
        self.fail_code = fail_code
        self.fail_left = fail_count
        self.lock = threading.Lock()

    def take(self, request, headers):
        """Returns the failure code to answer with, or None to accept."""
        with self.lock:
            refuse = self.fail_code is not None and self.fail_left != 0
            if refuse and self.fail_left > 0:
                self.fail_left -= 1
            body = json_format.MessageToDict(request, preserving_proto_field_name=True)
            line = {
                "accepted": not refuse,
                "at": time.time(),
                "headers": headers,
                "request": hex_ids(body),
            }
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
            return self.fail_code if refuse else None


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def Export(self, request, context):
        metadata = {k: v for k, v in context.invocation_metadata() if k.startswith("x-")}
        code = self.recorder.take(request, metadata)
        if code is not None:
            context.abort(GRPC_CODES.get(code, grpc.StatusCode.UNAVAILABLE), f"test refuses with {code}")
        return trace_service_pb2.ExportTraceServiceResponse()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def serve_grpc(port, recorder, tls):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(recorder), server)
    if tls.tls_cert:
        credentials = grpc.ssl_server_credentials(
            [(read(tls.tls_key), read(tls.tls_cert))],
            root_certificates=read(tls.client_ca) if tls.client_ca else None,
            require_client_auth=bool(tls.client_ca),
        )
        bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"PORT {bound}", flush=True)
    server.wait_for_termination()


def serve_http(port, recorder, tls):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/traces":
                self.send_error(404, f"no route {self.path}")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415, "expected application/x-protobuf")
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")}
            code = recorder.take(request, headers)
            if code is not None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.tls_cert, tls.tls_key)
        if tls.client_ca:
            context.load_verify_locations(tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail", default="")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca")
    args = parser.parse_args()
    code, count = None, 0
    if args.fail:
        code_text, count_text = args.fail.split(":")
        code, count = int(code_text), int(count_text)
    recorder = Recorder(args.out, code, count)
    if args.protocol == "grpc":
        serve_grpc(args.port, recorder, args)
    else:
        serve_http(args.port, recorder, args)


if __name__ == "__main__":
    sys.exit(main())
