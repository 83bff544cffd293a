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
from collections.abc import Container
from pathlib import Path

from collector import metrics
from collector.sink import Sink, SinkRefused, SinkUnavailable, points

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
        self._segments: dict[int, int] = {}  # seq -> bytes
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

    def oldest(
        self, max_lines: int, skip: Container[int] = (), below: int | None = None
    ) -> list[int]:
        """The oldest segments to replay together: about ``max_lines`` lines, at least one
        (none when every segment is in ``skip`` or not ``below``)."""
        seqs: list[int] = []
        budget = max_lines * 200  # bytes: line protocol points are ~200-300 bytes
        for seq in sorted(self._segments):  # stored in parallel: not always in order
            if below is not None and seq >= below:
                break
            if seq in skip:
                continue
            size = self._segments[seq]
            if seqs and size > budget:
                break
            seqs.append(seq)
            budget -= size
        return seqs

    def read(self, seqs: list[int]) -> tuple[bytes, list[int]]:
        """The body of ``seqs`` together, and the ones that are gone (blocking: run it in
        a thread)."""
        bodies: list[bytes] = []
        gone: list[int] = []
        for seq in seqs:
            try:
                bodies.append(self._path(seq).read_bytes())
            except FileNotFoundError:  # removed by hand: nothing to replay
                gone.append(seq)
        return b"".join(bodies), gone

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
    """Writes to ``sink``; what InfluxDB refuses, or has not confirmed within
    ``spool_after_s``, is made durable in the spool instead, and the request answered.

    A slow write is hedged, not abandoned: it goes on, and if InfluxDB confirms it later
    its segment is deleted unreplayed. A background task replays the rest, oldest first,
    with a jittered backoff while InfluxDB stays away.
    """

    def __init__(self, sink: Sink, spool: Spool, spool_after_s: float = 0.025) -> None:
        self.sink = sink
        self.spool = spool
        self.spool_after_s = spool_after_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # segments being written (in parallel: concurrent fsyncs share a journal commit);
        # the replayer takes nothing at or past the oldest of them, which keeps the order
        self._storing: set[int] = set()
        self._inflight: dict[int, int] = {}  # seq -> bytes: spooled, still being written
        self._writes: set[asyncio.Task[None]] = set()
        self._spooling = False  # for the log: say once when spooling starts

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

    def _backlog(self) -> bool:
        """Points wait in the spool (not counting hedged writes still under way)."""
        return self.spool.bytes > sum(self._inflight.values())

    async def write(self, body: bytes) -> None:
        if not body:
            return
        if self._backlog():  # keep order: new points queue behind the backlog
            await self._to_spool(body)
            return
        task = asyncio.get_running_loop().create_task(self.sink.write(body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        done, _ = await asyncio.wait({task}, timeout=self.spool_after_s)
        if not done:  # slow: durable in the spool now; the write goes on
            seq = await self._to_spool(body, hedge=task)
            log.debug("InfluxDB slower than %g s; segment %d spooled", self.spool_after_s, seq)
            return
        exc = task.exception()
        if exc is None:
            return
        if not isinstance(exc, SinkUnavailable):
            raise exc
        if not self._spooling:
            log.warning("%s; spooling until InfluxDB takes writes again", exc)
            self._spooling = True
        await self._to_spool(body)

    async def _to_spool(self, body: bytes, hedge: asyncio.Task[None] | None = None) -> int:
        seq = self.spool.reserve(body)  # SpoolFull -> 503, before anything is written
        if hedge is not None:
            self._inflight[seq] = len(body)
        self._storing.add(seq)
        try:
            await asyncio.to_thread(self.spool.store, seq, body)
        except OSError as exc:
            self._inflight.pop(seq, None)
            self.spool.unreserve(len(body))
            raise SinkUnavailable(f"collector spool: {exc}") from None
        finally:
            self._storing.discard(seq)
        self.spool.stored(seq, len(body))
        metrics.SPOOLED.inc(points(body))
        self._wake.set()  # even for a hedge: segments may wait behind this one
        if hedge is not None:
            hedge.add_done_callback(lambda t: self._landed(seq, t))
        return seq

    def _landed(self, seq: int, task: asyncio.Task[None]) -> None:
        """A hedged write finished: its segment is deleted, or left for the replayer."""
        self._inflight.pop(seq, None)
        if not task.cancelled() and task.exception() is None:
            self.spool.remove([seq])
        else:
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
        below = min(self._storing, default=None)
        seqs = self.spool.oldest(REPLAY_LINES, skip=self._inflight, below=below)
        if not seqs:  # only hedged writes still under way, or segments still being written
            self._wake.clear()
            return True
        body, gone = await asyncio.to_thread(self.spool.read, seqs)
        if gone:
            log.warning("spool segments %s vanished before replay", gone)
            self.spool.remove(gone)
        try:
            await self.sink.write(body)
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
        metrics.REPLAYED.inc(points(body))
        if not self._backlog() and self._spooling:
            log.info("spool replayed; writing to InfluxDB directly again")
            self._spooling = False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writes:  # hedged writes: let them land (their segments stay otherwise)
            await asyncio.wait(self._writes, timeout=5)
        await self.sink.close()
