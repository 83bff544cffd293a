"""The collector's durable spool: accepted points wait here while InfluxDB is down or slow.

"Accepted" means durable (DESIGN.md): a batch's points are in InfluxDB, or in a segment
file here that was fsync'd before the probe got its ``200``. Segments are replayed oldest
first once InfluxDB answers again, and deleted only after InfluxDB stored them. While a
backlog exists, new points join its end, so points reach InfluxDB in the order they were
accepted. The spool is bounded: when full, ``write`` raises ``SinkUnavailable`` and the
probe gets ``503`` and keeps its batch. Nothing is ever dropped here.

Replaying a segment that InfluxDB had in fact stored (a write that timed out on our side
but completed on its side) writes the same points again; InfluxDB keeps one point per
series and timestamp, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path

from collector import metrics
from collector.sink import Sink, SinkRefused, SinkUnavailable

log = logging.getLogger("popwatch.collector.spool")

SUFFIX = ".lp"
REPLAY_LINES = 20_000  # at most this many lines per replayed write


class SpoolFull(SinkUnavailable):
    """The spool is at its bound: the batch is not accepted (503)."""


class Spool:
    """Segment files ``<seq>.lp`` of line protocol, one per write, fsync'd on creation."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        (self.dir / "refused").mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):  # a crash mid-write: never acknowledged
            stale.unlink()
        self._segments: dict[int, int] = {}  # seq -> bytes, in order
        for path in sorted(self.dir.glob(f"*{SUFFIX}"), key=lambda p: int(p.stem)):
            self._segments[int(path.stem)] = path.stat().st_size
        self._next = max(self._segments, default=0) + 1
        self.bytes = sum(self._segments.values())
        self._gauge()

    def __len__(self) -> int:
        return len(self._segments)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}{SUFFIX}"

    def _gauge(self) -> None:
        metrics.SPOOL_BYTES.set(self.bytes)
        metrics.SPOOL_SEGMENTS.set(len(self._segments))

    def reserve(self, body: bytes) -> int:
        """A sequence number for ``body``, or ``SpoolFull``. Call from the event loop."""
        if self.bytes + len(body) > self.max_bytes:
            raise SpoolFull(
                f"collector spool full ({self.bytes} of {self.max_bytes} bytes waiting "
                "for InfluxDB)"
            )
        seq = self._next
        self._next += 1
        self.bytes += len(body)
        return seq

    def store(self, seq: int, body: bytes) -> None:
        """Write and fsync one segment (blocking: run it in a thread)."""
        path = self._path(seq)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stored(self, seq: int, size: int) -> None:
        self._segments[seq] = size
        self._gauge()

    def unreserve(self, size: int) -> None:
        self.bytes -= size

    def oldest(self, max_lines: int) -> list[int]:
        """The oldest segments to replay together: about ``max_lines`` lines, at least one."""
        seqs: list[int] = []
        budget = max_lines * 200  # bytes: line protocol points are ~200-300 bytes
        for seq, size in self._segments.items():
            if seqs and size > budget:
                break
            seqs.append(seq)
            budget -= size
        return seqs

    def read(self, seqs: list[int]) -> tuple[list[str], list[int]]:
        """The lines of ``seqs``, and the ones that are gone (blocking: run in a thread)."""
        lines: list[str] = []
        gone: list[int] = []
        for seq in seqs:
            try:
                lines.extend(self._path(seq).read_text().splitlines())
            except FileNotFoundError:  # removed by hand: nothing to replay
                gone.append(seq)
        return lines, gone

    def remove(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._path(seq).unlink(missing_ok=True)
            self.bytes -= self._segments.pop(seq, 0)
        self._gauge()

    def refuse(self, seqs: list[int]) -> None:
        """Set segments aside that InfluxDB refuses outright (kept for an operator)."""
        for seq in seqs:
            path = self._path(seq)
            if path.exists():
                path.rename(self.dir / "refused" / path.name)
        self.remove(seqs)


class SpoolingSink:
    """Writes to ``sink``; when it fails or takes longer than ``slow_s``, to the spool.

    A background task replays the spool, oldest first, with a jittered backoff while
    InfluxDB stays away.
    """

    def __init__(self, sink: Sink, spool: Spool, slow_s: float = 5.0) -> None:
        self.sink = sink
        self.spool = spool
        self.slow_s = slow_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one spool write at a time keeps segments in order

    async def start(self) -> None:
        await self.sink.start()
        self._task = asyncio.get_running_loop().create_task(self._replay())
        if len(self.spool):
            log.info(
                "spool holds %d segments (%d bytes) from before; replaying them",
                len(self.spool),
                self.spool.bytes,
            )
            self._wake.set()

    async def ready(self) -> bool:
        """InfluxDB answers (``/readyz`` adds the spool's room)."""
        return await self.sink.ready()

    async def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if not self.spool.bytes:  # no backlog, nothing on its way in: write directly
            try:
                await asyncio.wait_for(self.sink.write(lines), self.slow_s)
                return
            except TimeoutError:
                log.warning("InfluxDB took over %g s; spooling this write", self.slow_s)
            except SinkUnavailable as exc:
                log.warning("%s; spooling", exc)
        await self._to_spool(lines)

    async def _to_spool(self, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        async with self._lock:
            seq = self.spool.reserve(body)  # SpoolFull -> 503, before anything is written
            try:
                await asyncio.to_thread(self.spool.store, seq, body)
            except OSError as exc:
                self.spool.unreserve(len(body))
                raise SinkUnavailable(f"collector spool: {exc}") from None
            self.spool.stored(seq, len(body))
        metrics.SPOOLED.inc(len(lines))
        self._wake.set()

    async def _replay(self) -> None:
        backoff = 1.0
        while True:
            await self._wake.wait()
            if not len(self.spool):
                self._wake.clear()
                continue
            try:
                ok = await self._replay_one()
            except Exception:  # never let the replayer die: log and retry
                log.exception("spool replay failed; retrying")
                ok = False
            if ok:
                backoff = 1.0
            else:
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311
                backoff = min(backoff * 2, 10.0)

    async def _replay_one(self) -> bool:
        """Replays the oldest segments; False when InfluxDB cannot take them yet."""
        seqs = self.spool.oldest(REPLAY_LINES)
        lines, gone = await asyncio.to_thread(self.spool.read, seqs)
        if gone:
            log.warning("spool segments %s vanished before replay", gone)
            self.spool.remove(gone)
        try:
            await self.sink.write(lines)
        except SinkRefused as exc:
            log.error(
                "InfluxDB refuses spooled points (%s); set aside in %s/refused",
                exc,
                self.spool.dir,
            )
            self.spool.refuse(seqs)
            return True
        except SinkUnavailable as exc:
            log.info("spool replay waits: %s (%d bytes waiting)", exc, self.spool.bytes)
            return False
        self.spool.remove(seqs)
        metrics.REPLAYED.inc(len(lines))
        if not len(self.spool):
            log.info("spool replayed; writing to InfluxDB directly again")
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.sink.close()
