"""gRPC over cleartext HTTP/2 with grpcio (the C core), without generated
stubs: methods take and return raw bytes.

    grpc_app.py server PORT
    grpc_app.py client PORT THREADS CALLS [--wait]

The server serves shop.Orders: Get (unary; a request b"missing" is answered
NOT_FOUND), List (server streaming, three messages) and Big (unary, a 40 KB
answer, far beyond the probe's capture). It prints "ready" once it listens.

The client opens ONE channel (one TCP connection) and runs THREADS threads on
it at once, so their calls are streams multiplexed on that connection; each
thread makes CALLS calls in turn: Get, Get of a missing order, List, Big. Every
other call carries a W3C traceparent. With --wait it first makes one call,
prints "ready" and waits for a line on stdin (a connection opened before the
probe started). Prints the calls made, one "METHOD STATUS COUNT" line each.
"""

import collections
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "shop.Orders"


def serve(port):
    def get(request, context):
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return b"order:" + request

    def list_(request, context):
        for i in range(3):
            yield b"item %d" % i

    def big(request, context):
        return b"x" * 40000

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "List": grpc.unary_stream_rpc_method_handler(list_),
            "Big": grpc.unary_unary_rpc_method_handler(big),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def client(port, threads, calls, wait):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    get = channel.unary_unary(f"/{SERVICE}/Get")
    list_ = channel.unary_stream(f"/{SERVICE}/List")
    big = channel.unary_unary(f"/{SERVICE}/Big")
    made = collections.Counter()
    lock = threading.Lock()
    if wait:
        get(b"first", timeout=10)
        print("ready", flush=True)
        sys.stdin.readline()

    def run(t):
        mine = collections.Counter()
        for n in range(calls):
            meta = (
                (("traceparent", f"00-{t:016x}{n:016x}-{n + 1:016x}-01"),)
                if n % 2
                else ()
            )
            kind = n % 4
            if kind == 0:
                assert get(b"%d" % n, metadata=meta, timeout=10) == b"order:%d" % n
                mine["Get 0"] += 1
            elif kind == 1:
                try:
                    get(b"missing", metadata=meta, timeout=10)
                    sys.exit("a missing order was found")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND, e
                    mine["Get 5"] += 1
            elif kind == 2:
                assert len(list(list_(b"", metadata=meta, timeout=10))) == 3
                mine["List 0"] += 1
            else:
                assert len(big(b"", metadata=meta, timeout=10)) == 40000
                mine["Big 0"] += 1
        with lock:
            made.update(mine)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    for key, count in sorted(made.items()):
        print(key, count, flush=True)


if __name__ == "__main__":
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "server":
        serve(port)
    else:
        client(port, int(sys.argv[3]), int(sys.argv[4]), "--wait" in sys.argv)
