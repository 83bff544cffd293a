"""Ship records to a collector: batches on disk first, deleted only once accepted.

Records are gathered into batches (by count and by time), each batch is written to the
spool directory as one gzip file and fsync'd, and a sender posts the files oldest first.
Until its batch is cut, each record is also appended to ``spool/journal.jsonl`` with one
unbuffered ``write``: a killed process loses nothing (the kernel has the bytes), and the
next start spools what the journal holds. (A power cut can still take the records of
the batch being gathered: that file is fsync'd only when the batch is cut.)
A file is deleted only after the collector answers ``200``: ``accepted`` means durable
there. The spool survives restarts. It is bounded: when full, the oldest batch is
dropped, counted and logged.

Answers and what they do:

* ``200``: delete; records the collector rejected are logged with their reasons and
  counted, never sent again;
* ``429`` / ``503``: wait ``Retry-After`` (or the backoff), then try the same batch again;
* ``400`` / ``413``: the batch itself is refused; it is moved to ``spool/refused/``
  and logged, never retried forever;
* ``401``: the token is wrong or revoked; keep everything and retry slowly;
* a network error: exponential backoff with jitter, up to a minute;
* anything else (a redirect, which is never followed; a ``200`` whose body is not an
  ingest answer covering every record of the batch; a ``5xx``): the batch is kept and
  retried with backoff, and after ``MAX_ATTEMPTS`` such answers it is set aside in
  ``spool/refused/`` with a log line, so that no file blocks the queue forever.

What the probe reads of an answer is bounded, and so is a ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import logging
import os
import random
import socket
import ssl
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Final

import aiohttp
import msgspec

from probe import USER_AGENT
from probe.files import TMP_SUFFIX, write_durably
from probe.wire import SCHEMA_VERSION, Batch, IngestAnswer, Measurement, encode

log = logging.getLogger("popwatch.probe.shipper")


class LoopbackOnly(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver, refusing every address that is not loopback: the resolver of a
    plain-http connection to the collector, which carries the token in clear. The check
    is of the address connected to, not of the name: ``collector.localhost`` resolving
    (through /etc/hosts, say) to another host is refused."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            if not ipaddress.ip_address(r["host"]).is_loopback:
                raise OSError(
                    f"{host} resolves to {r['host']}, not a loopback address: plain http "
                    "would send the token in clear there; use https:// (or set "
                    "POPWATCH_INSECURE=1 on a network you trust)"
                )
        return found

    async def close(self) -> None:
        await self._inner.close()


def collector_connector(
    url: str, tls: ssl.SSLContext | None, insecure: bool
) -> aiohttp.TCPConnector | None:
    """The connector to the collector: pinned to ``tls``'s CA when it has one, and for
    plain http (unless ``insecure``) connecting only to loopback addresses."""
    if urllib.parse.urlsplit(url).scheme == "http" and not insecure:
        return aiohttp.TCPConnector(resolver=LoopbackOnly())
    return aiohttp.TCPConnector(ssl=tls) if tls else None


_MAX_BACKOFF: Final = 60.0
#: the most of a collector's answer the probe reads (20,000 rejections with reasons fit)
MAX_ANSWER_BYTES: Final = 8 * 1024 * 1024
#: the longest wait a Retry-After may ask for
MAX_RETRY_AFTER_S: Final = 300.0
#: answers that neither take a batch nor ask to wait, before it is set aside in refused/
MAX_ATTEMPTS: Final = 10


class TooLarge(Exception):
    """An answer longer than the reader's bound."""


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``, or ``TooLarge`` once it grows past ``limit`` bytes (the rest
    is never read: the connection is dropped with the response)."""
    buf = bytearray()
    while chunk := await resp.content.read(limit + 1 - len(buf)):
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"answer is over {limit} bytes")
    return bytes(buf)


class _Count(msgspec.Struct):
    measurements: list[msgspec.Raw]


_COUNT: Final = msgspec.json.Decoder(_Count)
_ANSWER: Final = msgspec.json.Decoder(IngestAnswer)


class Shipper:
    """A record sink that ships to a collector through an on-disk spool."""

    def __init__(
        self,
        url: str,
        token: str,
        spool_dir: Path,
        *,
        batch_records: int = 1000,
        batch_s: float = 2.0,
        spool_max_bytes: int = 200_000_000,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
        insecure: bool = False,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/measurements"
        self._insecure = insecure
        self._tls = tls  # the collector's pinned CA (None: the system's trust store)
        self._token = token
        self.dir = spool_dir
        self.refused_dir = spool_dir / "refused"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.refused_dir.mkdir(exist_ok=True)
        self.batch_records = batch_records
        self.batch_s = batch_s
        self.spool_max_bytes = spool_max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._buffer: list[Measurement] = []
        self._oldest = time.monotonic()
        self._wake = asyncio.Event()
        self._seq = int(time.time() * 1000)
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0
        self._attempts: dict[str, int] = {}  # failed answers per spool file
        self._journal_path = spool_dir / "journal.jsonl"
        for partial in spool_dir.glob(f"*{TMP_SUFFIX}"):  # a batch a crash left half-written
            partial.unlink()
        self._recover()
        self._journal = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _recover(self) -> None:
        """Spool the records a killed predecessor had gathered but not yet batched."""
        if not self._journal_path.exists():
            return
        decoder = msgspec.json.Decoder(Measurement)
        for line in self._journal_path.read_bytes().splitlines():
            try:
                self._buffer.append(decoder.decode(line))
            except msgspec.DecodeError:
                log.warning("journal: skipped an unreadable line")
        if self._buffer:
            log.info("journal: %d records from before a crash, spooled now", len(self._buffer))
            self._cut(truncate_journal=False)
        self._journal_path.unlink()

    # ------------------------------------------------------------ the sink side

    def write(self, record: Measurement) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(record)
        os.write(self._journal, encode(record) + b"\n")
        if len(self._buffer) >= self.batch_records:
            self._cut()

    def flush(self) -> None:
        """Called by the runner when it idles: cut a batch once it is old enough."""
        if self._buffer and time.monotonic() - self._oldest >= self.batch_s:
            self._cut()

    def close(self) -> None:
        """Spool whatever is buffered (the sender may be gone; the file is not)."""
        if self._buffer:
            self._cut()
        os.close(self._journal)
        self._journal_path.unlink(missing_ok=True)

    def _cut(self, truncate_journal: bool = True) -> None:
        records, self._buffer = self._buffer, []
        batch = Batch(
            schema=SCHEMA_VERSION,
            batch=str(uuid.uuid4()),
            sent_at=time.time_ns(),
            measurements=records,
        )
        self._seq += 1
        path = self.dir / f"{self._seq:016d}-{batch.batch}.json.gz"
        write_durably(path, gzip.compress(encode(batch), compresslevel=5))
        if truncate_journal:
            # the batch file holds these records now. A kill between the rename and this
            # truncate spools them twice on restart; the collector stores identical points
            # (same series and timestamp) once, so the count stays exact.
            os.ftruncate(self._journal, 0)
        self._enforce_bound()
        self._wake.set()

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("*.json.gz"))

    @property
    def depth(self) -> int:
        """Batches waiting in the spool."""
        return len(self._files())

    def _enforce_bound(self) -> None:
        files = self._files()
        total = sum(f.stat().st_size for f in files)
        while files and total > self.spool_max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            self.dropped += 1
            log.error(
                "spool over %d bytes: dropped the oldest batch %s",
                self.spool_max_bytes,
                oldest.name,
            )

    # ------------------------------------------------------------ the sender side

    async def run(self, stop: asyncio.Event) -> None:
        """Send spooled batches, oldest first, until ``stop`` and the spool is empty or
        the collector is unreachable (what is left stays on disk for the next start)."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": USER_AGENT,
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        }
        backoff = 1.0
        connector = collector_connector(self.url, self._tls, self._insecure)
        async with aiohttp.ClientSession(
            headers=headers, timeout=self._timeout, connector=connector
        ) as session:
            while True:
                files = self._files()
                if not files:
                    if stop.is_set():
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    continue
                wait = await self._send(session, files[0])
                if wait is None:
                    backoff = 1.0
                    continue
                if stop.is_set():
                    log.info(
                        "stopping with %d batches spooled; they go at the next start",
                        len(self._files()),
                    )
                    return
                delay = wait if wait > 0 else backoff * random.uniform(0.5, 1.5)  # noqa: S311
                backoff = min(backoff * 2, _MAX_BACKOFF)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    # Spool files are small and local: these take microseconds, so they run inline rather
    # than in a thread.
    def _load(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:  # dropped by the spool bound meanwhile
            return None

    def _done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _refuse(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.rename(self.refused_dir / path.name)

    def _count(self, body: bytes) -> int | None:
        """How many records a spooled batch holds (None: the file is not a batch)."""
        try:
            return len(_COUNT.decode(gzip.decompress(body)).measurements)
        except (OSError, EOFError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _attempt_failed(self, path: Path, why: str) -> float:
        """An answer that neither took the batch nor asked to wait: count it; after
        MAX_ATTEMPTS the file is set aside so that it cannot block the queue forever."""
        n = self._attempts.get(path.name, 0) + 1
        self._attempts[path.name] = n
        if n < MAX_ATTEMPTS:
            log.warning(
                "batch %s not delivered (attempt %d of %d): %s", path.name, n, MAX_ATTEMPTS, why
            )
            return 0.0
        log.error(
            "batch %s not delivered after %d attempts (%s); moved to %s",
            path.name,
            n,
            why,
            self.refused_dir,
        )
        self._refuse(path)
        return 0.0

    async def _send(self, session: aiohttp.ClientSession, path: Path) -> float | None:
        """Post one batch. None: done with it. A number: wait (0 = use the backoff)."""
        body = self._load(path)
        if body is None:
            return None
        count = self._count(body)
        if count is None:
            log.error("spool file %s is not a batch; moved to %s", path.name, self.refused_dir)
            self._refuse(path)
            return None
        try:
            # never follow a redirect: a batch goes to the collector or nowhere, and an
            # answer from another host must not delete it
            async with session.post(self.url, data=body, allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location", "")
                raw = await read_bounded(resp, MAX_ANSWER_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("collector %s unreachable: %s", self.url, exc or type(exc).__name__)
            return 0.0
        except TooLarge as exc:
            return self._attempt_failed(path, f"{status}: {exc}")
        text = raw.decode("utf-8", "replace")
        if status == 200:
            return self._accepted(path, count, raw)
        if status in (429, 503):
            wait = self._retry_after(retry_after)
            log.info(
                "collector busy (%d: %s); retrying %s",
                status,
                text.strip()[:200],
                f"in {wait:g} s as it asked" if wait else "with backoff",
            )
            return wait
        if status in (400, 413):
            log.error(
                "collector refused batch %s (%d: %s); moved to %s",
                path.name,
                status,
                text.strip()[:200],
                self.refused_dir,
            )
            self._refuse(path)
            return None
        if status == 401:
            log.error(
                "collector refused the token (401): is POPWATCH_TOKEN right, or was this "
                "probe revoked? Keeping %d batches",
                len(self._files()),
            )
            return _MAX_BACKOFF
        if 300 <= status < 400:
            why = f"{status} redirect to {location[:200]!r} not followed: set collector_url to "
            return self._attempt_failed(path, why + "the collector's own base URL")
        return self._attempt_failed(path, f"answer {status}: {text.strip()[:200]}")

    def _accepted(self, path: Path, count: int, raw: bytes) -> float | None:
        """A 200: delete the batch only if the answer is an ingest answer for all of it."""
        try:
            answer = _ANSWER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._attempt_failed(
                path, f"200 but not an ingest answer ({exc}): {raw[:100]!r}"
            )
        if not answer.duplicate and answer.accepted + len(answer.rejected) != count:
            why = (
                f"200 but the answer covers {answer.accepted} accepted + "
                f"{len(answer.rejected)} rejected of {count} records"
            )
            return self._attempt_failed(path, why)
        self.accepted += answer.accepted
        for item in answer.rejected:
            self.rejected += 1
            log.warning("collector rejected record %d of %s: %s", item.index, path.name, item.error)
        self._attempts.pop(path.name, None)
        self._done(path)
        return None

    @staticmethod
    def _retry_after(value: str | None) -> float:
        """Seconds from a Retry-After header; 0 (the backoff) when absent or not a number,
        and never more than MAX_RETRY_AFTER_S, whatever the collector asked."""
        try:
            wait = float(value) if value else 0.0
        except ValueError:
            return 0.0
        if not wait >= 0:  # NaN or negative
            return 0.0
        if wait > MAX_RETRY_AFTER_S:
            log.warning(
                "collector asked to wait %s s; waiting %g s at most", value, MAX_RETRY_AFTER_S
            )
            return MAX_RETRY_AFTER_S
        return wait
