"""PostgreSQL load through psycopg 3 (libpq), as Python services talk to it.

    pg_load.py PORT CLIENTS ROUNDS

CLIENTS threads, each with its own autocommit connection (libpq asks for SSL
first; the test server says no), each ROUNDS times:
  - an INSERT with parameters (extended protocol),
  - a SELECT with a parameter (extended protocol),
  - a SELECT with literals in its text (simple protocol, a client-side cursor),
  - a SELECT from a table that does not exist (an error, 42P01),
  - a SELECT of 2000 rows (a result far beyond the probe's capture).
psycopg prepares a statement run more than prepare_threshold (5) times on a
connection: one more exchange (Parse with a name, Sync), then Bind/Execute of
that name. Prints what it sent, one "KIND COUNT" line per kind, the prepares
("prepare_insert"…) among them.
"""

import collections
import sys
import threading

import psycopg

port, clients, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sent = collections.Counter()
lock = threading.Lock()
dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

with psycopg.connect(dsn, autocommit=True) as setup:
    setup.execute("CREATE TABLE IF NOT EXISTS items (k text, v int)")


def client(i):
    mine = collections.Counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        literal = psycopg.ClientCursor(conn)
        for n in range(rounds):
            cur.execute("INSERT INTO items (k, v) VALUES (%s, %s)", (f"c{i}", n))
            cur.execute("SELECT v FROM items WHERE k = %s LIMIT 1", (f"c{i}",))
            cur.fetchall()
            literal.execute("SELECT count(*) FROM items WHERE k = 'secret-%s' AND v > 12345" % i)
            literal.fetchall()
            try:
                cur.execute("SELECT * FROM missing_table")
            except psycopg.errors.UndefinedTable:
                pass
            else:
                sys.exit("a missing table did not fail")
            cur.execute("SELECT generate_series(1, 2000)")
            cur.fetchall()
            mine.update(["insert", "select_param", "select_literal", "error", "many_rows"])
            if n == conn.prepare_threshold:
                # The 6th run of each statement that succeeded before.
                mine.update(["prepare_insert", "prepare_select_param", "prepare_many_rows"])
    with lock:
        sent.update(mine)


threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for kind, count in sorted(sent.items()):
    print(kind, count, flush=True)
