"""The end-to-end tests' client: sends GET /r/<run>/<i> for i in [first, first+count)
to the front service from --concurrency threads, over keep-alive connections or
one connection per request. Not traced (no tracing variables, no tracing code).
Requests listed in --slow get ?sleep_ms=<--sleep-ms> (back2 sleeps that long).

Prints "DONE <ok> <failed>" and exits 1 when any request failed.
"""

import argparse
import http.client
import queue
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--keepalive", action="store_true")
    parser.add_argument("--slow", default="", help="comma-separated request numbers to make slow")
    parser.add_argument("--sleep-ms", type=int, default=0)
    parser.add_argument("--pace-ms", type=int, default=0, help="pause between two requests of a thread")
    args = parser.parse_args()

    slow = {int(x) for x in args.slow.split(",") if x}
    work = queue.Queue()
    for i in range(args.first, args.first + args.count):
        work.put(i)
    ok = [0]
    failed = []
    lock = threading.Lock()

    def worker():
        conn = None
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                break
            path = f"/r/{args.run}/{i}"
            if i in slow:
                path += f"?sleep_ms={args.sleep_ms}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(args.host, args.port, timeout=60)
                headers = {} if args.keepalive else {"Connection": "close"}
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                if not args.keepalive:
                    conn.close()
                    conn = None
                with lock:
                    ok[0] += 1
                if args.pace_ms:
                    time.sleep(args.pace_ms / 1000)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    failed.append(f"{path}: {e}")
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in failed[:10]:
        print(f"FAILED {f}", file=sys.stderr)
    print(f"DONE {ok[0]} {len(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
