"""PyPI `miltertest` (pure Python MTA side) driving a milter that adds one
header at end of message; exits 0 if the header came back.

usage: python pymt.py SOCKET_PATH HEADER_NAME HEADER_VALUE

Stages the milter negotiated away (SMFIP_NO*) are not sent, as an MTA would.
Runs two messages on one connection (with ABORT between them, like Postfix).
"""
import socket
import sys

from miltertest import constants as c
from miltertest.client import MilterConnection


def stage(conn, flag, cmd, **args):
    """Sends a stage unless negotiated away; expects CONTINUE."""
    if conn.protocol_flags & flag:
        return
    conn.send(cmd, **args)


def message(conn, n, name, value):
    stage(conn, c.SMFIP_NOMAIL, c.SMFIC_MAIL, args=["<a@example.org>"])
    stage(conn, c.SMFIP_NORCPT, c.SMFIC_RCPT, args=["<b@example.com>"])
    stage(conn, c.SMFIP_NODATA, c.SMFIC_DATA)
    if not conn.protocol_flags & c.SMFIP_NOHDRS:
        conn.send_headers([("From", "a@example.org"), ("Subject", f"pymt {n}")])
    stage(conn, c.SMFIP_NOEOH, c.SMFIC_EOH)
    if not conn.protocol_flags & c.SMFIP_NOBODY:
        conn.send_body("This is a test!\r\n")
    replies = conn.send_eom()
    final = replies[-1][0]
    if final not in (c.SMFIR_ACCEPT, c.SMFIR_CONTINUE):
        raise SystemExit(f"message {n}: end of message answered {replies[-1]}")
    added = [r[1] for r in replies if r[0] == c.SMFIR_ADDHEADER]
    if {"name": name, "value": value} not in added:
        raise SystemExit(f"message {n}: {name}: {value} not added; got {replies}")
    conn._send(c.SMFIC_ABORT)


def main():
    path, name, value = sys.argv[1:4]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    conn = MilterConnection(sock)
    conn.optneg_mta()
    stage(conn, c.SMFIP_NOCONNECT, c.SMFIC_CONNECT, hostname="client.test",
          family="4", port=25, address="127.0.0.1")
    stage(conn, c.SMFIP_NOHELO, c.SMFIC_HELO, helo="client.test")
    for n in (1, 2):
        message(conn, n, name, value)
    conn._send(c.SMFIC_QUIT)
    sock.close()
    print(f"PASS: {name}: {value} added to 2 messages on one connection")


if __name__ == "__main__":
    main()
