"""The backend behind every middle tier of the runtime tests: a thread per
connection, HTTP/1.1 keep-alive, answers any GET with a short body.

    python3 backend.py HOST PORT
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("backend " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# Python's default listen backlog is 5: when a middle tier opens 16 upstream
# connections at once, SYNs beyond it are dropped and retried after 1 s, and
# the requests behind them wait a second (real servers listen with 128+).
ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
server.daemon_threads = True
print("READY", flush=True)
server.serve_forever()
