"""The lab's control socket: one JSON line in, one JSON line out, per connection.

Each client is served by a thread of its own, so a client that sends half a line and
waits holds up no other (``down`` included); the commands themselves still run one at
a time (the lab's lock). A client has ``read_timeout_s`` to send its whole line, a
line is at most ``max_line`` bytes (nothing more is read), and at most ``max_clients``
are served at once. Whatever goes wrong, the client gets one line,
``{"ok": false, "error": "..."}``, never a connection closed without an answer.

It knows nothing of namespaces: it serves any ``handle`` (a request -> its answer), so
it can be started on a temporary path with a stand-in behind it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

from popwatch_lab.commands import BadRequest

READ_TIMEOUT_S: Final = 5.0
MAX_LINE: Final = 64 * 1024
MAX_CLIENTS: Final = 16


def one_line(text: str, limit: int = 1000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refusal(why: str) -> dict[str, Any]:
    return {"ok": False, "error": one_line(why)}


class ControlServer:
    """A Unix socket at ``path`` (mode 0600) that answers requests with ``handle``."""

    def __init__(
        self,
        path: Path,
        handle: Callable[[object], dict[str, Any]],
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_line: int = MAX_LINE,
        max_clients: int = MAX_CLIENTS,
        log: TextIO | None = None,
    ) -> None:
        self.path = path
        self.log = log  # where failures' tracebacks go (None: standard error, the log)
        self.handle = handle
        self.read_timeout_s = read_timeout_s
        self.max_line = max_line
        self.slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients
        self.clients: set[threading.Thread] = set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(str(path))
            os.chmod(path, 0o600)
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise

    def serve(self, stop: threading.Event) -> None:
        """Answer clients until ``stop`` is set; then let the ones being served finish
        (the one that asked for ``down`` gets its answer)."""
        self.sock.settimeout(0.2)
        try:
            while not stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                if not self.slots.acquire(blocking=False):
                    busy = f"busy: {self.max_clients} clients are being served; try again"
                    self._send(conn, refusal(busy))
                    conn.close()
                    continue
                t = threading.Thread(target=self._client, args=(conn,), daemon=True)
                self.clients.add(t)
                t.start()
            for t in list(self.clients):
                t.join(self.read_timeout_s + 1)
        finally:
            self.sock.close()

    def _client(self, conn: socket.socket) -> None:
        try:
            line, why = self._read_line(conn)
            answer = refusal(why) if why else self._answer(line)
            self._send(conn, answer)
        finally:
            conn.close()
            self.clients.discard(threading.current_thread())
            self.slots.release()

    def _read_line(self, conn: socket.socket) -> tuple[bytes, str | None]:
        """The request line (without its newline), or why there is none."""
        deadline = time.monotonic() + self.read_timeout_s
        buf = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", f"no whole request line within {self.read_timeout_s:g} s"
            conn.settimeout(left)
            try:
                chunk = conn.recv(min(65536, self.max_line + 1 - len(buf)))
            except TimeoutError:
                continue
            except OSError as exc:
                return b"", f"reading the request: {exc}"
            if not chunk:  # the client closed its end: what it sent is the request
                return bytes(buf), None if buf else "an empty request"
            end = chunk.find(b"\n")
            if end >= 0:
                buf += chunk[:end]
                if len(buf) > self.max_line:
                    break
                return bytes(buf), None
            buf += chunk
            if len(buf) > self.max_line:
                break
        return b"", f"a request line is at most {self.max_line} bytes"

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, RecursionError) as exc:
            return refusal(f"a request is one line of JSON: {exc}")
        try:
            return {"ok": True, **self.handle(req)}
        except BadRequest as exc:
            return refusal(str(exc))
        except Exception as exc:  # a failure, not a request's fault: the log has it
            log = self.log or sys.stderr
            print(f"{time.strftime('%H:%M:%S')} {req!r:.200}:", file=log)
            traceback.print_exc(file=log)
            return refusal(f"{type(exc).__name__}: {exc}")

    def _send(self, conn: socket.socket, answer: dict[str, Any]) -> None:
        try:
            conn.settimeout(self.read_timeout_s)
            conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
        except OSError:
            pass  # the client went away: nobody to tell
