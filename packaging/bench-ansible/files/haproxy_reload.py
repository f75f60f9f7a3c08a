#!/usr/bin/env python3
"""Reloads HAProxy through its master CLI and waits until the master reports the reload.

Usage: haproxy_reload.py MASTER_SOCKET [TIMEOUT_SECONDS]

The seed pipeline reloaded HAProxy with a HUP; on a master-worker HAProxy without
systemd the equivalent is the master CLI's `reload`. The master re-executes itself and
drops the connection, so success is read from `show proc`: the reload counter grows and
the failed-reload counter does not. Exit 0 on success, 1 on a failed or missing reload.
"""
import socket
import sys
import time


def cli(path, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")
    finally:
        s.close()


def master_state(path):
    for line in cli(path, "show proc").splitlines():
        words = line.split()
        if len(words) > 2 and words[1] == "master":
            failed = int(line.split("[failed:")[1].split("]")[0])
            return int(words[2]), failed
    raise RuntimeError("no master line in `show proc`")


def main():
    path = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    before = master_state(path)
    try:
        cli(path, "reload")
    except OSError:
        pass  # the master drops the connection while re-executing
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            now = master_state(path)
        except (OSError, RuntimeError, ValueError, IndexError):
            time.sleep(0.02)
            continue
        if now[0] > before[0]:
            if now[1] > before[1]:
                print("haproxy reload failed", file=sys.stderr)
                return 1
            print("reloaded")
            return 0
        time.sleep(0.02)
    print("haproxy did not report the reload within %.0fs" % timeout, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
