"""The plain TCP sender: serve PATH to N connections at once, each with
``os.sendfile`` from its own file descriptor, then exit. Bounded by WAIT.

argv: PATH ADDR PORT N WAIT READY_FILE (READY_FILE is created once listening).
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def serve(conn: socket.socket, path: str, size: int, errors: list[str]) -> None:
    try:
        with conn, open(path, "rb") as f:
            conn.setblocking(True)
            offset = 0
            while offset < size:
                sent = os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    raise OSError("connection closed early")
                offset += sent
            conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(str(e))


def main(argv: list[str]) -> int:
    path, addr, port_text, n_text, wait_text, ready = argv[:6]
    port, n, wait = int(port_text), int(n_text), float(wait_text)
    size = os.path.getsize(path)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    srv = socket.create_server((addr, port), family=family, backlog=n)
    srv.settimeout(wait)
    open(ready, "w").close()
    errors: list[str] = []
    threads = []
    for _ in range(n):
        conn, _ = srv.accept()
        t = threading.Thread(target=serve, args=(conn, path, size, errors), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(wait)
    if errors or any(t.is_alive() for t in threads):
        sys.exit(f"tcp sender: {errors or 'timed out'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
