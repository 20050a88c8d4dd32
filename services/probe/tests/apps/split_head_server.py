# An HTTP/1.1 keep-alive server that reads and writes its messages in pieces,
# as some servers do: each request is read with recvmsg into an 8-byte iovec and
# a larger one (the head spans both), each response's head is written as three
# iovecs and the body as a fourth, alternately with sendmsg and with writev.
# usage: split_head_server.py PORT
import os
import socket
import sys
import threading

port = int(sys.argv[1])


def serve(conn):
    n, pending = 0, b""
    while True:
        while b"\r\n\r\n" not in pending:
            small, large = bytearray(8), bytearray(4096)
            got = conn.recvmsg_into([small, large])[0]
            if got == 0:
                conn.close()
                return
            pending += bytes(small[: min(got, 8)]) + bytes(large[: max(got - 8, 0)])
        head, pending = pending.split(b"\r\n\r\n", 1)
        body = b"ok " + head.split(b" ")[1]
        parts = [b"HTTP/1.1 200 OK\r\n", b"Content-Length: %d\r\n" % len(body), b"\r\n", body]
        if n % 2 == 0:
            conn.sendmsg(parts)
        else:
            os.writev(conn.fileno(), parts)
        n += 1


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(16)
print("READY", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
