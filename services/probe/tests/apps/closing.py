# Connections that end while the client has not read the answer yet.
#   closing.py server PORT: answers each request (Content-Length), then closes
#     with SO_LINGER 0, so the client gets a reset: its socket reaches CLOSE
#     before it reads the answer the kernel queued.
#   closing.py client PORT PATH: sends a GET, waits until the answer and the
#     server's FIN (or reset) are queued, then reads everything in one go (one
#     read takes the last bytes and the FIN together).
import socket
import struct
import sys
import time

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "server":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    while True:
        conn, _ = listener.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nreset")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
else:
    time.sleep(0.3)  # let the probe select this process before it talks
    path = sys.argv[3]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    time.sleep(0.5)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert got.startswith(b"HTTP/1."), got
    print(got.split(b"\r\n", 1)[0].decode())
