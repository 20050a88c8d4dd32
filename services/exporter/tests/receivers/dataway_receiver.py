"""A Dataway stand-in for espan's exporter tests: accepts
POST /v1/write/tracing?token=..., gunzips the body and parses every line with
the independent `line-protocol-parser` package (PyPI), appending one JSON line
per request to --out: {"accepted": bool, "token": ..., "x_points": the X-Points
header, "points": [...]}, each point {"measurement", "tags", "fields", "time"}.

A line the parser rejects is recorded as {"unparsable": line, "error": ...},
so the test fails on it. --fail CODE:N answers the first N requests with CODE;
N = -1 refuses every request; with --echo a refusal quotes the request line,
token and all, as some servers do. Prints "PORT <n>" once listening.
"""

import argparse
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from line_protocol_parser import parse_line


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail", default="")
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args()
    state = {"code": None, "left": 0}
    if args.fail:
        code_text, count_text = args.fail.split(":")
        state["code"], state["left"] = int(code_text), int(count_text)
    out = open(args.out, "a", encoding="utf-8")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            url = urlsplit(self.path)
            if url.path != "/v1/write/tracing":
                self.send_error(404, f"no route {url.path}")
                return
            token = parse_qs(url.query).get("token", [""])[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            points = []
            for line in body.decode("utf-8").split("\n"):
                if not line:
                    continue
                try:
                    points.append(parse_line(line))
                except Exception as error:  # the parser raises its own types
                    points.append({"unparsable": line, "error": str(error)})
            with lock:
                refuse = state["code"] is not None and state["left"] != 0
                if refuse and state["left"] > 0:
                    state["left"] -= 1
                record = {
                    "accepted": not refuse,
                    "token": token,
                    "x_points": self.headers.get("X-Points"),
                    "points": points,
                }
                out.write(json.dumps(record) + "\n")
                out.flush()
            answer = f"refused: POST {self.path}".encode() if refuse and args.echo else b""
            self.send_response(state["code"] if refuse else 200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
