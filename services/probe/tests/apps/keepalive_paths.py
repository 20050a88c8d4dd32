# Requests on one keep-alive connection, one per path given:
# keepalive_paths.py PORT PATH...
import http.client
import sys
import time

time.sleep(0.3)  # let the probe select this process before it talks
port, paths = int(sys.argv[1]), sys.argv[2:]
conn = http.client.HTTPConnection("127.0.0.1", port)
for path in paths:
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
conn.close()
