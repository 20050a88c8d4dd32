"""Redis load through redis-py, the client most Python services use.

    redis_load.py PORT CLIENTS ROUNDS [--wait]

CLIENTS threads, each with its own connection (half speak RESP2, half RESP3),
each ROUNDS times: INCR (sent as INCRBY), GET, a pipeline of five commands in one write (SET,
GET, HSET, HGET, LPUSH), and LPUSH on a string key (a WRONGTYPE error).
With --wait, every client connects and sends one PING, prints "ready" and
waits for a line on stdin before the rounds (a connection opened before the
probe started). Prints the commands sent, one "NAME COUNT" line per name.
"""

import collections
import sys
import threading

import redis

port, clients, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
wait = "--wait" in sys.argv
sent = collections.Counter()
lock = threading.Lock()
connected = threading.Barrier(clients + 1)
go = threading.Event()


def client(i):
    r = redis.Redis(
        host="127.0.0.1",
        port=port,
        protocol=3 if i % 2 else 2,
        single_connection_client=True,
    )
    mine = collections.Counter()
    if wait:
        r.ping()
        mine["PING"] += 1
        connected.wait()
        go.wait()
    for n in range(rounds):
        key = f"c{i}:{n}"
        r.incr(f"n{i}")
        r.get(key)
        mine.update(["INCRBY", "GET"])  # redis-py sends INCR as INCRBY
        p = r.pipeline(transaction=False)
        p.set(key, "v" * (n % 50))
        p.get(key)
        p.hset(f"h{i}", "f", n)
        p.hget(f"h{i}", "f")
        p.lpush(f"l{i}", n)
        p.execute()
        mine.update(["SET", "GET", "HSET", "HGET", "LPUSH"])
        try:
            r.lpush(key, 1)
        except redis.ResponseError:
            mine["LPUSH"] += 1
        else:
            sys.exit("LPUSH on a string key did not fail")
    with lock:
        sent.update(mine)


threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
if wait:
    connected.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
for t in threads:
    t.join()
for name, count in sorted(sent.items()):
    print(name, count, flush=True)
