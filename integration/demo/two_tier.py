"""The demo's app: a threaded HTTP "front" service that, for every request,
calls a "back" service over HTTP/1.1 from the same thread, then answers.
No tracing library, no trace headers: espan sees it all from the sockets.

    python3 two_tier.py front --port 8081 --back 127.0.0.1:8082
    python3 two_tier.py back --port 8082
"""

import argparse
import http.client
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Back(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"order": self.path.rsplit("/", 1)[-1], "status": "shipped"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def front_handler(back):
    host, port = back.split(":")

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            order = self.path.rsplit("/", 1)[-1]
            conn.request("GET", f"/orders/{order}")
            answer = conn.getresponse().read()
            conn.close()
            body = b'{"front": "ok", "back": ' + answer + b"}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Front


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["front", "back"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--back", default="127.0.0.1:8082")
    args = parser.parse_args()
    handler = Back if args.role == "back" else front_handler(args.back)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"{args.role} listening on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
