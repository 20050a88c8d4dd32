"""The thread-pool middle tier of the runtime tests: a thread per connection
serves each request, but hands the backend call to a ThreadPoolExecutor and
waits for it (as services that fan out through an executor do).
GET /m/<rest> calls GET <backend>/b/<rest> on a pool thread.

    python3 middle_pool.py HOST PORT BACKEND_HOST BACKEND_PORT
"""
import http.client
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port, backend_host, backend_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool")
conns = threading.local()


def fetch(path):
    # Each pool thread keeps its own keep-alive connection to the backend.
    conn = getattr(conns, "conn", None)
    if conn is None:
        conn = conns.conn = http.client.HTTPConnection(backend_host, backend_port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status, body = pool.submit(fetch, "/b/" + self.path[len("/m/"):]).result()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.request_queue_size = 128  # as in backend.py
server = ThreadingHTTPServer((host, port), Handler)
server.daemon_threads = True
print("READY", flush=True)
server.serve_forever()
