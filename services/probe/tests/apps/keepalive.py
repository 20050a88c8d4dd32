# N requests on one keep-alive connection: keepalive.py PORT N
import http.client
import sys
import time

time.sleep(0.3)  # let the probe select this process before it talks
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    conn.request("GET", "/k/%d" % i)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
conn.close()
