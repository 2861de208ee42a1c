#!/usr/bin/python3
"""Recording milter proxy: sits between an MTA and a milter on unix sockets
and writes what the MTA sends (the MTA -> filter byte stream) to a file, one
file per milter connection.

usage: record.py LISTEN_PATH UPSTREAM_PATH OUT_PREFIX [MAX_CONNECTIONS]

  LISTEN_PATH     unix socket the MTA connects to (created with mode 0666)
  UPSTREAM_PATH   unix socket of the real milter
  OUT_PREFIX      connection N is written to OUT_PREFIX-N.bin (N from 1)
  MAX_CONNECTIONS stop accepting after this many (default 50)

Bytes are relayed unchanged in both directions; only the MTA's side is
written. Stops on SIGTERM. Loopback/filesystem only.
"""
import os
import signal
import socket
import sys
import threading

IDLE_TIMEOUT = 120  # seconds without traffic before a relayed connection is cut


def pump(src, dst, record):
    """Copies src to dst until EOF; appends every chunk to `record` if given."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record is not None:
                record.write(data)
                record.flush()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def relay(client, upstream_path, out_path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.settimeout(10)
        upstream.connect(upstream_path)
    except OSError as e:
        print(f"record.py: cannot reach {upstream_path}: {e}", file=sys.stderr)
        client.close()
        return
    for s in (client, upstream):
        s.settimeout(IDLE_TIMEOUT)
    with open(out_path, "wb") as record:
        back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        back.start()
        pump(client, upstream, record)
        back.join(IDLE_TIMEOUT)
    client.close()
    upstream.close()


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    listen_path, upstream_path, prefix = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    try:
        os.unlink(listen_path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen_path)
    os.chmod(listen_path, 0o666)
    server.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"record.py: {listen_path} -> {upstream_path}, writing {prefix}-N.bin", file=sys.stderr)
    for n in range(1, limit + 1):
        client, _ = server.accept()
        out = f"{prefix}-{n}.bin"
        threading.Thread(target=relay, args=(client, upstream_path, out), daemon=True).start()
    print(f"record.py: {limit} connections recorded, no longer accepting", file=sys.stderr)
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
