"""One tier of the end-to-end app: a Flask service instrumented with the upstream
OpenTelemetry SDK (Flask, requests and redis instrumentation). Its own spans are
the ground truth espan is measured against; they go to a JSON-lines file, never
over the network, so the app's exporter adds no traffic for espan to see.

Roles (every path carries a unique id, so each call is one (kind, path)):
  front  GET /r/<run>/<i>      calls back1 GET /b1/<run>/<i>/<k> for k < fanout
                               (with /<padding> of --path-pad bytes when set: a
                               large trace), then back2 GET /b2/<run>/<i>
  back1  GET /b1/...           answers
  back2  GET /b2/...           INCR + GET on redis, then answers

  ?sleep_ms=N on a front request makes back2 sleep N ms (a slow call); the query
  is not part of the path espan records.

Server models (--server): `threaded` (werkzeug, a thread per connection) or
`pool` (a fixed pool of worker threads, reused across connections).
Context propagation follows OTEL_PROPAGATORS (`none` turns it off, so no trace
header crosses the wire).

    python3 tier.py front --port 8080 --back1 http://10.0.0.2:8080 --back2 ... --spans-out f.jsonl
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Flask, request
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class JsonLinesExporter(SpanExporter):
    """Writes each finished span as one JSON line (ids in hex)."""

    def __init__(self, path):
        self.out = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def export(self, spans):
        lines = []
        for s in spans:
            ctx = s.get_span_context()
            lines.append(
                json.dumps(
                    {
                        "service": s.resource.attributes.get("service.name"),
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                        "kind": s.kind.name,
                        "name": s.name,
                        "start_ns": s.start_time,
                        "end_ns": s.end_time,
                        "thread": s.attributes.get("test.thread"),
                        "attributes": {k: v for k, v in s.attributes.items() if isinstance(v, (str, int, float, bool))},
                    }
                )
            )
        with self.lock:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        with self.lock:
            self.out.close()


class NoPropagation(TextMapPropagator):
    """Injects nothing and extracts an empty context. OTEL_PROPAGATORS=none
    should mean this, but the SDK's empty composite propagator extracts None,
    which the Flask instrumentation then fails on (opentelemetry-api 1.45)."""

    def extract(self, carrier, context=None, getter=None):
        return context if context is not None else Context()

    def inject(self, carrier, context=None, setter=None):
        pass

    @property
    def fields(self):
        return set()


class ThreadTagger(SpanProcessor):
    """Tags every span with the native id of the thread that starts it: the
    harness finds espan's Redis spans (which carry their thread) by it."""

    def on_start(self, span, parent_context=None):
        span.set_attribute("test.thread", threading.get_native_id())


def setup_tracing(service, spans_out):
    if os.environ.get("OTEL_PROPAGATORS", "").strip().lower() == "none":
        propagate.set_global_textmap(NoPropagation())
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(ThreadTagger())
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(spans_out)))
    trace.set_tracer_provider(provider)
    return provider


class KeepAliveHandler(WSGIRequestHandler):
    # HTTP/1.1: werkzeug keeps the connection open between requests.
    protocol_version = "HTTP/1.1"

    def log_request(self, *args, **kwargs):
        pass


class PoolServer(BaseWSGIServer):
    """A thread-pool server: each accepted connection is served by one of a fixed
    set of worker threads, which are reused for connection after connection."""

    def __init__(self, host, port, app, workers):
        super().__init__(host, port, app, handler=KeepAliveHandler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="worker")

    def process_request(self, req, client_address):
        self.pool.submit(self._serve, req, client_address)

    def _serve(self, req, client_address):
        try:
            self.finish_request(req, client_address)
        except Exception:  # noqa: BLE001 - a broken client must not kill the worker
            self.handle_error(req, client_address)
        finally:
            self.shutdown_request(req)


_sessions = threading.local()


def http_get(url, keepalive):
    """GET from the serving thread; with keep-alive each thread keeps its own
    connections (a requests.Session per thread), else one connection per call."""
    if keepalive:
        session = getattr(_sessions, "session", None)
        if session is None:
            session = _sessions.session = requests.Session()
        r = session.get(url, timeout=30)
    else:
        r = requests.get(url, headers={"Connection": "close"}, timeout=30)
    r.raise_for_status()
    return r.text


def make_app(args):
    app = Flask(args.role)
    redis_client = None
    if args.role == "back2":
        import redis

        host, port = args.redis.rsplit(":", 1)
        redis_client = redis.Redis(host=host, port=int(port), socket_timeout=10)

    def tag_thread():
        span = trace.get_current_span()
        span.set_attribute("test.thread", threading.get_native_id())

    @app.route("/r/<run>/<int:i>")
    def front(run, i):
        tag_thread()
        answers = []
        pad = "/" + "p" * args.path_pad if args.path_pad else ""
        for k in range(args.fanout):
            answers.append(http_get(f"{args.back1}/b1/{run}/{i}/{k}{pad}", args.keepalive))
        sleep = request.args.get("sleep_ms", "0")
        answers.append(http_get(f"{args.back2}/b2/{run}/{i}?sleep_ms={sleep}", args.keepalive))
        return {"front": i, "answers": len(answers)}

    @app.route("/b1/<run>/<int:i>/<int:k>")
    @app.route("/b1/<run>/<int:i>/<int:k>/<pad>")
    def back1(run, i, k, pad=""):
        tag_thread()
        return {"back1": [i, k]}

    @app.route("/b2/<run>/<int:i>")
    def back2(run, i):
        tag_thread()
        count = redis_client.incr(f"calls:{run}")
        redis_client.get(f"calls:{run}")
        sleep_ms = int(request.args.get("sleep_ms", "0"))
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        return {"back2": i, "count": count}

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["front", "back1", "back2"])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--back1", default="")
    parser.add_argument("--back2", default="")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--fanout", type=int, default=2)
    parser.add_argument("--path-pad", type=int, default=0, help="bytes of padding in back1 paths")
    parser.add_argument("--keepalive", action="store_true", help="reuse connections to the backends")
    parser.add_argument("--server", choices=["threaded", "pool"], default="threaded")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--spans-out", required=True)
    args = parser.parse_args()

    provider = setup_tracing(os.environ.get("OTEL_SERVICE_NAME", args.role), args.spans_out)
    RequestsInstrumentor().instrument()
    RedisInstrumentor().instrument()
    app = make_app(args)
    FlaskInstrumentor().instrument_app(app)

    if args.server == "pool":
        server = PoolServer(args.host, args.port, app, args.workers)
    else:
        server = make_server(args.host, args.port, app, threaded=True, request_handler=KeepAliveHandler)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"READY {args.role} {args.port}", flush=True)
    server.serve_forever()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
