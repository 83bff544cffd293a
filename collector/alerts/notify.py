"""Notifiers: Prometheus Alertmanager, a JSON webhook, a Slack-compatible webhook.

Each has its own queue and task, so a slow or failing receiver never holds up an
evaluation. A failed delivery is logged and retried with exponential backoff (1 s
doubling to 60 s, with jitter); nothing is dropped silently:

* Alertmanager gets the latest state of every alert (a newer state of the same alert
  replaces one not yet delivered), each firing one with ``endsAt`` = now +
  ``ends_after_s``, computed when it is sent, and each resolved one with ``endsAt`` =
  the time it resolved.
* Webhooks get every state change, in order. Past ``MAX_QUEUE`` undelivered messages
  the oldest is dropped, with an error logged and counted.

``close`` gives queued deliveries a few seconds, then logs what it leaves undelivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import aiohttp

from collector.alerts import metrics

log = logging.getLogger("popwatch.collector.alerts")

MAX_QUEUE = 10_000
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: what is read of a receiver's answer: its status matters, its body only for the log
MAX_ANSWER_BYTES = 4096
#: a delivery refused this many times in a row with a 4xx (not 408 or 429) is set aside
MAX_REFUSALS = 5
#: Slack takes about 40,000 characters of text; a longer message is cut, and says so
MAX_SLACK_CHARS = 38_000


@dataclass(frozen=True, slots=True)
class Notice:
    """One alert's state for the notifiers."""

    status: str  # "firing" or "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float  # epoch s: when it fired (the evaluation time)
    resolved_at: float | None = None  # epoch s (wall clock): when it resolved
    generator_url: str = ""
    change_at: int | None = None  # epoch ns: the evaluation of the state change (if one)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


def fingerprint(labels: Mapping[str, str]) -> str:
    """An alert's name in the notices and the delivery log: a hash of its labels."""
    text = json.dumps(sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rfc3339(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Notifier(Protocol):
    name: str

    def submit(self, notices: list[Notice], change: bool) -> None:
        """Queue notices; ``change``: they are state changes (else a re-send)."""

    async def start(self) -> None: ...

    async def close(self, grace_s: float = 5.0) -> None: ...


@dataclass
class _Backoff:
    attempt: int = 0

    def next(self) -> float:
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self.attempt)
        self.attempt += 1
        return float(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not a secret


class _Worker:
    """A queue drained by one task, with retries."""

    name = "notifier"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued
        self._task: asyncio.Task[None] | None = None
        self._backoff = _Backoff()
        self._refusals = 0  # consecutive refusals of the delivery at the head

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _pending(self) -> bool:
        raise NotImplementedError

    async def _deliver_one(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            self._idle.clear()
            while self._pending():
                try:
                    await self._deliver_one()
                except _Failed as exc:
                    self._refusals = self._refusals + 1 if exc.permanent else 0
                    if self._refusals >= MAX_REFUSALS:
                        metrics.NOTIFICATIONS.labels(self.name, "set_aside").inc()
                        log.error(
                            "%s %s: refused %d times (%s); this notification is set aside "
                            "and the next one delivered",
                            self.name,
                            self.url,
                            self._refusals,
                            exc,
                        )
                        self._set_aside()
                        self._refusals = 0
                        self._backoff.attempt = 0
                        continue
                    delay = self._backoff.next()
                    metrics.NOTIFICATIONS.labels(self.name, "failed").inc()
                    log.warning(
                        "%s %s: %s; retry %d in %.1f s",
                        self.name,
                        self.url,
                        exc,
                        self._backoff.attempt,
                        delay,
                    )
                    await asyncio.sleep(delay)
                else:
                    metrics.NOTIFICATIONS.labels(self.name, "sent").inc()
                    self._backoff.attempt = 0
                    self._refusals = 0

    def _set_aside(self) -> None:
        """Drop what failed for good (the oldest queued delivery)."""
        raise NotImplementedError

    async def _post(self, body: object) -> None:
        """Deliver ``body``: a 2xx, or ``_Failed``. No redirect is followed (a receiver
        that moved is the operator's to fix, and the alerts go nowhere else), and at most
        ``MAX_ANSWER_BYTES`` of the answer is read (the collector is the ingest process:
        a receiver answering a gigabyte must not take its memory)."""
        assert self._session is not None
        try:
            async with self._session.post(self.url, json=body, allow_redirects=False) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES)
                text = raw.decode("utf-8", "replace").strip()[:200]
                if 300 <= resp.status < 400:
                    where = resp.headers.get("Location", "?")[:200]
                    raise _Failed(
                        f"HTTP {resp.status} to {where}: redirects are not followed",
                        permanent=True,
                    )
                if resp.status >= 300:
                    permanent = 400 <= resp.status < 500 and resp.status not in (408, 429)
                    raise _Failed(f"HTTP {resp.status}: {text}", permanent=permanent)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Failed(str(exc) or type(exc).__name__) from None

    async def close(self, grace_s: float = 5.0) -> None:
        if self._pending() and self._backoff.attempt == 0:  # on its way: give it a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending():
            log.error("%s %s: stopping with undelivered notifications", self.name, self.url)
        if self._session is not None:
            await self._session.close()


class _Failed(Exception):
    """A delivery that did not go through; ``permanent``: the receiver refused it (a
    4xx, a redirect), so trying the same again is unlikely to help."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Alertmanager(_Worker):
    """``POST {url}/api/v2/alerts``: the latest state of each alert."""

    name = "alertmanager"

    def __init__(self, base_url: str, ends_after_s: float) -> None:
        super().__init__(base_url.rstrip("/") + "/api/v2/alerts")
        self.ends_after_s = ends_after_s
        self._latest: dict[str, Notice] = {}

    def submit(self, notices: list[Notice], change: bool) -> None:
        for n in notices:
            self._latest[n.fingerprint] = n
        if notices:
            self._kick()

    def _pending(self) -> bool:
        return bool(self._latest)

    async def _deliver_one(self) -> None:
        batch = dict(self._latest)
        now = time.time()
        body = []
        for n in batch.values():
            alert: dict[str, object] = {
                "labels": n.labels,
                "annotations": n.annotations,
                "startsAt": rfc3339(n.starts_at),
                # firing: Alertmanager resolves it by itself if no re-send comes by then
                "endsAt": rfc3339(
                    n.resolved_at if n.resolved_at is not None else now + self.ends_after_s
                ),
            }
            if n.generator_url:
                alert["generatorURL"] = n.generator_url
            body.append(alert)
        await self._post(body)
        self._delivered(batch)

    def _delivered(self, batch: dict[str, Notice]) -> None:
        for fp, n in batch.items():
            if self._latest.get(fp) is n:  # not replaced while this was on its way
                del self._latest[fp]

    def _set_aside(self) -> None:
        self._latest.clear()  # the next re-send brings the firing alerts back


class Webhook(_Worker):
    """Every state change, in order: ``json`` (Alertmanager's webhook body, version 4)
    or ``slack`` (``{"text": ...}``)."""

    def __init__(self, url: str, fmt: str) -> None:
        super().__init__(url)
        self.fmt = fmt
        self.name = f"webhook-{fmt}"
        self._queue: collections.deque[tuple[object, list[Notice]]] = collections.deque()
        #: told of each delivered message's notices (the engine's delivery log)
        self.on_delivered: Callable[[Webhook, list[Notice]], Awaitable[None]] | None = None

    def submit(self, notices: list[Notice], change: bool) -> None:
        if not change or not notices:
            return
        for status in ("firing", "resolved"):
            group = [n for n in notices if n.status == status]
            if group:
                body = json_body(group) if self.fmt == "json" else slack_body(group)
                self._queue.append((body, group))
        while len(self._queue) > MAX_QUEUE:
            self._queue.popleft()
            metrics.NOTIFICATIONS.labels(self.name, "dropped").inc()
            log.error(
                "%s %s: over %d undelivered messages; dropped the oldest",
                self.name,
                self.url,
                MAX_QUEUE,
            )
        self._kick()

    def _pending(self) -> bool:
        return bool(self._queue)

    async def _deliver_one(self) -> None:
        head = self._queue[0]
        await self._post(head[0])
        if self._queue and self._queue[0] is head:  # not dropped while on its way
            self._queue.popleft()
        if self.on_delivered is not None:
            try:
                await self.on_delivered(self, head[1])
            except Exception:  # the log is the engine's: its failure is no failed delivery
                log.exception("%s %s: delivered, but not logged", self.name, self.url)

    def _set_aside(self) -> None:
        if self._queue:
            self._queue.popleft()

    def queued(self) -> set[tuple[str, str, int | None]]:
        """(fingerprint, state, change instant) of each notice in undelivered messages."""
        return {(n.fingerprint, n.status, n.change_at) for _, group in self._queue for n in group}

    def clear(self) -> None:
        """Drop every undelivered message (another evaluator delivers them)."""
        self._queue.clear()


def json_body(notices: list[Notice]) -> dict[str, object]:
    """Alertmanager's webhook body (version 4), so its consumers read ours."""
    common = dict(set.intersection(*(set(n.labels.items()) for n in notices)))
    return {
        "version": "4",
        "groupKey": "popwatch",
        "truncatedAlerts": 0,
        "status": notices[0].status,
        "receiver": "popwatch",
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [
            {
                "status": n.status,
                "labels": n.labels,
                "annotations": n.annotations,
                "startsAt": rfc3339(n.starts_at),
                "endsAt": rfc3339(n.resolved_at) if n.resolved_at else "0001-01-01T00:00:00Z",
                "generatorURL": n.generator_url,
                "fingerprint": n.fingerprint,
            }
            for n in notices
        ],
    }


def slack_escape(text: str) -> str:
    """Text as Slack shows it literally: ``&``, ``<`` and ``>`` escaped, so a target or an
    NSID (which a DNS server chooses) cannot mention ``<!channel>`` or make a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(notices: list[Notice]) -> dict[str, object]:
    """A Slack incoming-webhook message: one line per alert, every value escaped, cut at
    ``MAX_SLACK_CHARS`` with a line saying how many more there are."""
    lines: list[str] = []
    size = 0
    for i, n in enumerate(notices):
        mark = ":rotating_light: FIRING" if n.status == "firing" else ":white_check_mark: RESOLVED"
        where = " ".join(
            f"{k}={slack_escape(v)}"
            for k, v in n.labels.items()
            if k not in ("alertname", "severity")
        )
        name = slack_escape(n.labels.get("alertname", ""))
        severity = slack_escape(n.labels.get("severity", ""))
        summary = slack_escape(n.annotations.get("summary", ""))
        text = f"{mark} *{name}* ({severity}) {where}: {summary}"
        if n.generator_url:
            text += f" <{slack_escape(n.generator_url)}|dashboard>"
        if size + len(text) + 1 > MAX_SLACK_CHARS:
            rest = len(notices) - i
            lines.append(
                f"… and {rest} more alert{'s' if rest != 1 else ''} (the alert measurement "
                "and Alertmanager hold them all)"
            )
            break
        lines.append(text)
        size += len(text) + 1
    return {"text": "\n".join(lines)}


__all__ = [
    "Alertmanager",
    "Notice",
    "Notifier",
    "Webhook",
    "json_body",
    "rfc3339",
    "slack_body",
    "slack_escape",
]
