"""The asyncio middle tier of the runtime tests: one event loop serves every
connection with asyncio streams and calls the backend over a pool of keep-alive
connections. GET /m/<rest> calls GET <backend>/b/<rest> and returns its body.
Nothing tells the probe it is an event loop: it learns it when the loop's
thread reads a second request before answering the first.

    python3 middle_asyncio.py HOST PORT BACKEND_HOST BACKEND_PORT
"""
import asyncio
import sys

host, port, backend_host, backend_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
idle = []  # keep-alive (reader, writer) pairs to the backend


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def call(path):
    if idle:
        reader, writer = idle.pop()
    else:
        reader, writer = await asyncio.open_connection(backend_host, backend_port)
    writer.write(("GET %s HTTP/1.1\r\nHost: backend\r\n\r\n" % path).encode())
    status_line, headers = await read_head(reader)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    idle.append((reader, writer))
    return int(status_line.split()[1]), body


async def serve(reader, writer):
    try:
        while True:
            request_line, _ = await read_head(reader)
            path = request_line.split()[1]
            status, body = await call("/b/" + path[len("/m/"):])
            writer.write(b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, host, port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
