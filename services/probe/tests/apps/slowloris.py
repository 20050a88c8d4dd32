"""A slowloris against itself: a server that reads whatever comes (one thread,
selectors) and CONNS connections to it that each send the start of an HTTP
head and then a few bytes more now and then, never finishing it.

    slowloris.py PORT CONNS

Connections come from 127.0.0.1 and 127.0.0.2 (more than one source address's
ephemeral ports). Prints "ready" once every connection has sent its start and
its first trickle, then trickles a byte on each every 10 s until stdin closes.
"""

import resource
import selectors
import socket
import sys
import threading
import time

port, conns = int(sys.argv[1]), int(sys.argv[2])
# Both ends of every connection are here: 2 descriptors each (the hard limit
# may be as low as 20000; the test spreads its connections over processes).
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if hard != resource.RLIM_INFINITY and hard < 2 * conns + 64:
    sys.exit(f"{conns} connections need {2 * conns + 64} descriptors; the limit is {hard}")
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(4096)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)


def serve():
    while True:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is listener:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
            else:
                try:
                    if not key.fileobj.recv(65536):
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                except OSError:
                    pass


threading.Thread(target=serve, daemon=True).start()

start = b"GET /slow HTTP/1.1\r\nHost: victim\r\nX-Padding: " + b"a" * 400
clients = []
for i in range(conns):
    s = socket.socket()
    # IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect, by the fast
    # 4-tuple search, not by bind's scan of every bound port.
    s.setsockopt(socket.IPPROTO_IP, 24, 1)
    s.bind(("127.0.0.%d" % (1 + i % 2), 0))
    s.connect(("127.0.0.1", port))
    s.sendall(start)
    clients.append(s)
for s in clients:
    s.sendall(b"b" * 10)
print("ready", flush=True)

done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
while not done.wait(10.0):
    for s in clients:
        try:
            s.sendall(b"c")
        except OSError:
            pass
