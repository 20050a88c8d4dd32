"""The load generator of the runtime tests: COUNT requests GET /m/<run>/<i> from
CONCURRENCY threads, each on its own keep-alive connection. Exits non-zero if
any request fails. With `traceparent`, each request carries a W3C trace context
header of its own (the middle tiers do not pass it on, but nginx).

    python3 caller.py HOST PORT RUN COUNT CONCURRENCY [traceparent]
"""
import http.client
import os
import sys
import threading
import time

host, port, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count, concurrency = int(sys.argv[4]), int(sys.argv[5])
traceparent = sys.argv[6:7] == ["traceparent"]
time.sleep(0.3)  # let the probe select this process before it talks
next_i = iter(range(count))
lock = threading.Lock()
failures = []


def worker():
    conn = http.client.HTTPConnection(host, port, timeout=30)
    while True:
        with lock:
            i = next(next_i, None)
        if i is None:
            break
        try:
            headers = {}
            if traceparent:
                headers["traceparent"] = "00-%s-%s-01" % (os.urandom(16).hex(), os.urandom(8).hex())
            conn.request("GET", "/m/%s/%d" % (run, i), headers=headers)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or b"/b/%s/%d" % (run.encode(), i) not in body:
                failures.append((i, r.status, body[:80]))
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append((i, repr(e)))
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.close()


threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    print("failures:", failures[:10], file=sys.stderr)
    sys.exit(1)
print("done", count)
