"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) on loopback, and
a webhook receiver that records what arrives.

The Alertmanager routes every alert to one webhook receiver (``Receiver``) with
``send_resolved``; each alert is its own group (``group_by: ['...']``), and
``group_wait``/``group_interval`` are short, so tests see notifications within a second
or two. Clustering is off. ``Receiver`` is also what the engine's own JSON and Slack
webhooks are pointed at in tests; it can be told to fail its next requests.

By hand: ``python tests/support/alertmanager.py`` starts both and prints what arrives.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by hand: python tests/support/alertmanager.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.need import need
from support.servers import Server

BINARY = "prometheus-alertmanager"


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POSTed JSON body with its arrival
    time (``time.time()``). ``fail_next(n)`` answers the next ``n`` requests 500."""

    def __init__(self) -> None:
        self.received: list[tuple[float, Any]] = []
        self.attempts = 0
        self._fail = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.attempts += 1
                    failing = receiver._fail > 0
                    if failing:
                        receiver._fail -= 1
                    else:
                        receiver.received.append((time.time(), json.loads(body or b"null")))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail = n

    def bodies(self) -> list[Any]:
        with self._lock:
            return [b for _, b in self.received]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every Alertmanager (or JSON webhook) notification, in order of
        arrival, each with the notification's arrival time as ``_at``."""
        with self._lock:
            return [
                {**a, "_at": at}
                for at, body in self.received
                if isinstance(body, dict)
                for a in body.get("alerts", [])
            ]

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Alertmanager(Server):
    """``prometheus-alertmanager`` on a free port, routing everything to ``webhook``."""

    name = "alertmanager"

    def __init__(self, webhook: str, repeat_interval: str = "1h") -> None:
        need(BINARY)
        super().__init__(nsid="", identity="")
        self.webhook = webhook
        self.repeat_interval = repeat_interval

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Alertmanager:
        (self.dir / "alertmanager.yml").write_text(
            f"""route:
  receiver: test
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: {self.repeat_interval}
receivers:
  - name: test
    webhook_configs:
      - url: {self.webhook}
        send_resolved: true
"""
        )
        self._start(
            [
                BINARY,
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
        )
        deadline = time.monotonic() + 15
        assert self.proc is not None
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager did not start: {(self.dir / 'log').read_text()}")
            time.sleep(0.05)

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: what Alertmanager holds now."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as r:
            result: list[dict[str, Any]] = json.load(r)
            return result

    def __enter__(self) -> Alertmanager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    with Receiver() as rx, Alertmanager(rx.url) as am:
        print(f"alertmanager {am.url}, webhook receiver {rx.url}; Ctrl-C stops", flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.5)
                for body in rx.bodies()[seen:]:
                    print(json.dumps(body), flush=True)
                    seen += 1
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
