"""MySQL/MariaDB load through two real clients: PyMySQL (text protocol, the
client fills in parameters) and MySQL Connector/Python's prepared cursor
(COM_STMT_PREPARE / COM_STMT_EXECUTE).

    mysql_load.py PORT CLIENTS ROUNDS

CLIENTS threads, each with a connection of each client, each ROUNDS times:
  - INSERT with parameters (PyMySQL: literals in the text),
  - SELECT with a parameter, prepared (Connector/Python),
  - SELECT from a table that does not exist (an error, 1146),
  - SELECT of 2000 rows (a result far beyond the probe's capture).
Prints what it sent, one "KIND COUNT" line per kind.
"""

import collections
import sys
import threading

import mysql.connector
import pymysql

port, clients, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sent = collections.Counter()
lock = threading.Lock()
args = dict(host="127.0.0.1", port=port, user="root", database="test", autocommit=True)

setup = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
setup.cursor().execute("CREATE DATABASE IF NOT EXISTS test")
setup.cursor().execute("CREATE TABLE IF NOT EXISTS test.items (k VARCHAR(32), v INT)")
setup.close()


def client(i):
    mine = collections.Counter()
    text = pymysql.connect(**args)
    prepared = mysql.connector.connect(use_pure=True, **args)
    cur = text.cursor()
    pcur = prepared.cursor(prepared=True)
    for n in range(rounds):
        cur.execute("INSERT INTO items (k, v) VALUES (%s, %s)", (f"secret-{i}", 12345 + n))
        pcur.execute("SELECT v FROM items WHERE k = %s LIMIT 1", (f"c{i}",))
        pcur.fetchall()
        try:
            cur.execute("SELECT * FROM missing_table")
        except pymysql.err.ProgrammingError:
            pass
        else:
            sys.exit("a missing table did not fail")
        cur.execute("SELECT seq FROM seq_1_to_2000")
        cur.fetchall()
        mine.update(["insert", "select_prepared", "error", "many_rows"])
    text.close()
    prepared.close()
    with lock:
        sent.update(mine)


threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for kind, count in sorted(sent.items()):
    print(kind, count, flush=True)
