"""The notifiers against hostile receivers: what a webhook or an Alertmanager answers
cannot take the collector's memory, send its alerts elsewhere, or hold up the messages
after it; and the Slack text carries a target's or an NSID's characters as text.

The receivers are stand-ins (plain HTTP servers on loopback): a Slack, a webhook that
answers a gigabyte, redirects or refuses; no real one can run here. The notifiers are
the collector's own, over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from collector.alerts import notify
from collector.alerts.notify import MAX_SLACK_CHARS, Notice, Webhook, slack_body


class Receiver(BaseHTTPRequestHandler):
    """Records each body; answers as ``server.mode`` says: ``ok``, ``huge`` (200 and an
    endless body), ``redirect`` (302 to ``server.elsewhere``), ``refuse`` (400)."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.bodies.append(json.loads(body))
        mode = self.server.mode
        try:
            if mode == "redirect":
                self.send_response(302)
                self.send_header("Location", self.server.elsewhere)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "refuse" and len(self.server.bodies) <= self.server.refusals:
                self.send_response(400)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no")
            else:
                self.send_response(200)
                self.end_headers()
                if mode == "huge":
                    chunk = b"x" * 1_000_000
                    for _ in range(1000):  # a gigabyte, if anyone read it
                        self.wfile.write(chunk)
                        self.server.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiver(mode: str, **kw: Any) -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    server.mode, server.bodies, server.sent = mode, [], 0  # type: ignore[attr-defined]
    server.elsewhere, server.refusals = kw.get("elsewhere", ""), kw.get("refusals", 0)  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def notice(target: str = "ns1", summary: str = "eu: ns1 latency 80 ms") -> Notice:
    return Notice(
        status="firing",
        labels={"alertname": "latency", "severity": "critical", "region": "eu", "target": target},
        annotations={"summary": summary},
        starts_at=time.time(),
    )


async def deliver(hook: Webhook, notices: list[list[Notice]], until: Any, within: float) -> None:
    await hook.start()
    try:
        for n in notices:
            hook.submit(n, change=True)
        for _ in range(int(within / 0.05)):  # poll: the notifier has no event to wait on
            if until():
                break
            await asyncio.sleep(0.05)
    finally:
        await hook.close(grace_s=0.5)


async def test_a_webhook_answering_a_gigabyte_is_read_for_a_few_kilobytes() -> None:
    """A webhook that answers 200 and then a gigabyte: the delivery counts, the
    collector reads a few kilobytes of it and hangs up, and it takes well under a
    second."""
    with receiver("huge") as r:
        hook = Webhook(f"http://127.0.0.1:{r.server_port}/hook", "json")
        t0 = time.monotonic()
        await deliver(hook, [[notice()]], lambda: not hook._pending(), within=20)
        took = time.monotonic() - t0
    assert not hook._pending()  # delivered
    assert len(r.bodies) == 1
    assert r.sent < 100_000_000, r.sent  # it stopped writing: nobody read on
    assert took < 10, took


async def test_a_redirect_is_never_followed_and_a_refusal_is_set_aside() -> None:
    """A webhook answering 302 elsewhere: nothing reaches the other host, and after
    MAX_REFUSALS tries the message is set aside; a webhook refusing with 400 the first
    messages does not hold up the next one."""
    with receiver("ok") as elsewhere, receiver("redirect") as r:
        r.elsewhere = f"http://127.0.0.1:{elsewhere.server_port}/stolen"
        hook = Webhook(f"http://127.0.0.1:{r.server_port}/hook", "json")
        notify.BACKOFF_FIRST_S, saved = 0.01, notify.BACKOFF_FIRST_S
        try:
            await deliver(hook, [[notice()]], lambda: not hook._pending(), within=30)
        finally:
            notify.BACKOFF_FIRST_S = saved
    assert elsewhere.bodies == []
    assert len(r.bodies) == notify.MAX_REFUSALS and not hook._pending()

    with receiver("refuse", refusals=notify.MAX_REFUSALS) as r:
        hook = Webhook(f"http://127.0.0.1:{r.server_port}/hook", "json")
        notify.BACKOFF_FIRST_S = 0.01
        try:
            await deliver(
                hook,
                [[notice("first")], [notice("second")]],
                lambda: len(r.bodies) > notify.MAX_REFUSALS,
                within=30,
            )
        finally:
            notify.BACKOFF_FIRST_S = saved
    targets = [b["alerts"][0]["labels"]["target"] for b in r.bodies]
    assert targets == ["first"] * notify.MAX_REFUSALS + ["second"]


async def test_slack_text_is_escaped_and_capped() -> None:
    """A target named like a Slack mention and a link, and an NSID-bearing summary, reach
    Slack as text; 5,000 alerts make one message within Slack's size, which says how
    many were left out."""
    evil = "<!channel> <https://evil.example|click> & co"
    with receiver("ok") as r:
        hook = Webhook(f"http://127.0.0.1:{r.server_port}/slack", "slack")
        await deliver(
            hook, [[notice(evil, f"moved to site {evil}")]], lambda: bool(r.bodies), within=10
        )
    text = r.bodies[0]["text"]
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co" in text
    many = slack_body([notice(f"target-{i}", "x" * 200) for i in range(5000)])
    assert isinstance(many["text"], str)
    assert len(many["text"]) <= MAX_SLACK_CHARS + 200
    assert many["text"].endswith(
        "more alerts (the alert measurement and Alertmanager hold them all)"
    )
