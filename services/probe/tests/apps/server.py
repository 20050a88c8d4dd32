# A threaded HTTP/1.1 server for the probe's tests (keep-alive, Content-Length).
# Usage: server.py PORT [DOWNSTREAM_PORT]. With a downstream, each request is
# first forwarded there (same path) with http.client, as a two-tier app does.
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
DOWNSTREAM = int(sys.argv[2]) if len(sys.argv) > 2 else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok " + self.path.encode()
        if DOWNSTREAM:
            conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM)
            conn.request("GET", self.path)
            body = conn.getresponse().read()
            conn.close()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
