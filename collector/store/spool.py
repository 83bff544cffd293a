"""The collector's durable spool: accepted points wait here while InfluxDB is down or slow.

"Accepted" means durable (docs/design.md): a batch's points are in InfluxDB, or in a segment
file here that was fsync'd before the probe got its ``200``. Segments are replayed oldest
first once InfluxDB answers again, and deleted only after InfluxDB stored them. While a
backlog exists, new points join its end, so points reach InfluxDB in the order they were
accepted. The spool is bounded: when full, ``write`` raises ``SinkUnavailable`` and the
probe gets ``503`` and keeps its batch. Nothing is ever dropped here.

Replaying a segment that InfluxDB had in fact stored (a write that timed out on our side
but completed on its side) writes the same points again; InfluxDB keeps one point per
series and timestamp, so nothing is counted twice.

No line can stop the queue. Writes go out in pieces of at most ``MAX_WRITE_BYTES``. A
piece InfluxDB refuses is split in two and each half written again: first along segment
boundaries, then within the one segment, down to the single lines InfluxDB refuses
(within ``MAX_SPLITS`` splits per segment). Those lines, each after a ``#`` comment with
InfluxDB's reason, go to ``refused/`` for an operator, and everything else is stored.

Every segment stands alone (one that lost its end cannot swallow the next one's first
line), and an entry of the spool directory that is not a segment this collector wrote is
skipped with a warning, never replayed and never a reason not to start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import time
from collections.abc import Container
from pathlib import Path
from typing import Final

from collector.store import metrics
from collector.store.sink import MAX_WRITE_BYTES, Sink, SinkRefused, SinkUnavailable, points
from probe.files import TMP_SUFFIX, write_durably

log = logging.getLogger("popwatch.collector.store.spool")

SUFFIX = ".lp"
_SEGMENT: Final = re.compile(r"^(\d{16})\.lp$")
REPLAY_LINES = 20_000  # at most this many lines per replayed write
#: the most splits spent finding the lines InfluxDB refuses in one segment (or one body
#: written directly): each bad line costs about 2 log2(lines) writes; past this, the
#: undecided rest of that segment is set aside whole
MAX_SPLITS: Final = 64
#: a backlog that no replay has shrunk for this long is "growing" (``/readyz``)
GROWING_S: Final = 30.0
#: the spool this full is "nearly full" (``/readyz``): soon every batch gets a 503
NEARLY_FULL: Final = 0.9
#: how long /readyz says that InfluxDB refused lines, after the last refusal
REFUSED_WINDOW_S: Final = 600.0


def refusal_kind(reason: str) -> str:
    """A refusal's cause, for the metric's label: InfluxDB's limits by name, a field type
    conflict, a line it cannot parse, or ``other``."""
    for kind in ("max-values-per-tag", "max-series-per-database"):
        if kind in reason:
            return kind
    if "field type conflict" in reason:
        return "field-type-conflict"
    if "unable to parse" in reason or "bad timestamp" in reason:
        return "unparsable"
    if "over" in reason and "bytes" in reason:
        return "too-large"
    return "other"


class SpoolFull(SinkUnavailable):
    """The spool is at its bound: the batch is not accepted (503)."""


class Spool:
    """Segment files ``<seq>.lp`` of line protocol, one per write, fsync'd on creation."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.refused_dir = self.dir / "refused"
        self.refused_dir.mkdir(parents=True, exist_ok=True)
        self._segments: dict[int, int] = {}  # seq -> bytes
        self._skipped: set[str] = set()  # entries that are not segments, warned about once
        for path in sorted(self.dir.iterdir()):
            if path.name.endswith(TMP_SUFFIX) and path.is_file():
                path.unlink()  # a crash mid-write: never acknowledged
                continue
            m = _SEGMENT.match(path.name)
            if m and path.is_file() and not path.is_symlink():
                self._segments[int(m.group(1))] = path.stat().st_size
            elif path != self.refused_dir:
                self._skip(path.name, "not a segment this collector wrote")
        self._next = max(self._segments, default=0) + 1
        self._refused_seq = 0
        self.bytes = sum(self._segments.values())
        self._gauge()

    def __len__(self) -> int:
        return len(self._segments)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}{SUFFIX}"

    def _skip(self, name: str, why: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            log.warning("spool: skipping %s in %s: %s", name, self.dir, why)

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
        """Write one segment durably (blocking: run it in a thread)."""
        write_durably(self._path(seq), body)

    def stored(self, seq: int, size: int) -> None:
        self._segments[seq] = size
        self._gauge()

    def unreserve(self, size: int) -> None:
        self.bytes -= size

    def oldest(
        self, max_lines: int, skip: Container[int] = (), below: int | None = None
    ) -> list[int]:
        """The oldest segments to replay together: up to about ``max_lines`` lines, at
        least one segment (none when every segment is in ``skip`` or not ``below``)."""
        seqs: list[int] = []
        budget = max_lines * 200  # bytes: points are ~250-350 bytes, so this errs low
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

    def read(self, seqs: list[int]) -> tuple[list[bytes], list[int]]:
        """The body of each of ``seqs``, and the ones that cannot be read (blocking: run
        it in a thread). Each segment stands alone: one whose last line lost its newline
        (a truncated file) gets it back, so that line never joins the next segment's first.
        """
        bodies: list[bytes] = []
        gone: list[int] = []
        for seq in seqs:
            try:
                body = self._path(seq).read_bytes()
            except FileNotFoundError:  # removed by hand: nothing to replay
                gone.append(seq)
                continue
            except OSError as exc:  # replaced by a directory, unreadable: skip it
                self._skip(self._path(seq).name, str(exc))
                gone.append(seq)
                continue
            if body and not body.endswith(b"\n"):
                body += b"\n"
            bodies.append(body)
        return bodies, gone

    def remove(self, seqs: list[int]) -> None:
        """Forget ``seqs`` and delete their files (an entry that is no file is left)."""
        for seq in seqs:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                self._path(seq).unlink()
            self.bytes -= self._segments.pop(seq, 0)
        self._gauge()

    def set_aside(self, refused: list[tuple[bytes, str]]) -> Path:
        """Write lines InfluxDB refuses to ``refused/``, durably, each after a ``#``
        comment with the reason (so the file can be fixed and posted to InfluxDB as is).
        Blocking: run it in a thread."""
        out: list[bytes] = []
        for line, reason in refused:
            why = "".join(c if c.isprintable() else " " for c in reason)
            out.append(f"# {why}\n".encode())
            out.append(line.rstrip(b"\n") + b"\n")
        self._refused_seq += 1
        path = self.refused_dir / f"{time.time_ns()}-{self._refused_seq}{SUFFIX}"
        write_durably(path, b"".join(out))
        return path


def _chunks(body: bytes, limit: int) -> list[bytes]:
    """``body`` in pieces of whole lines, each at most ``limit`` bytes (a single longer
    line is a piece of its own)."""
    pieces: list[bytes] = []
    start = 0
    while len(body) - start > limit:
        cut = body.rfind(b"\n", start, start + limit)
        if cut < start:  # one line longer than the limit
            cut = body.find(b"\n", start + limit)
            if cut < 0:
                break
        pieces.append(body[start : cut + 1])
        start = cut + 1
    if start < len(body):
        pieces.append(body[start:])
    return pieces


def _groups(parts: list[bytes], limit: int) -> list[list[bytes]]:
    """``parts`` in consecutive groups of at most ``limit`` bytes each; a part over the
    limit is cut into pieces of whole lines (``_chunks``), each a group of its own."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = 0
    for part in parts:
        if len(part) > limit:
            groups.extend([piece] for piece in _chunks(part, limit))
            continue
        if group and size + len(part) > limit:
            groups.append(group)
            group, size = [], 0
        group.append(part)
        size += len(part)
    if group:
        groups.append(group)
    return groups


def _halves(body: bytes) -> tuple[bytes, bytes]:
    """``body`` (two lines or more) cut at the line boundary nearest its middle."""
    cut = body.rfind(b"\n", 0, len(body) // 2) + 1
    if cut == 0:
        cut = body.find(b"\n") + 1
    return body[:cut], body[cut:]


#: the most bytes of hedged writes (spooled, and still being written to InfluxDB) held in
#: memory at once; past it a request's points go to the spool without a write attempt
MAX_HEDGED_BYTES: Final = 32_000_000
#: how long a request waits for hedged writes to land before its points are spooled alone
MAX_HEDGE_WAIT_S: Final = 2.0


class SpoolingSink:
    """Writes to ``sink``; what InfluxDB has not confirmed within ``spool_after_s``, or
    cannot take now, is made durable in the spool instead, and the request answered.

    A slow write is hedged, not abandoned: it goes on, and if InfluxDB confirms it later
    its segment is deleted unreplayed. A background task replays the rest, oldest first,
    with a jittered backoff while InfluxDB stays away. What InfluxDB refuses is split
    down to the refused lines, which go to ``refused/`` (see the module's docstring).
    """

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        spool_after_s: float = 0.025,
        max_write_bytes: int = MAX_WRITE_BYTES,
        max_hedged_bytes: int = MAX_HEDGED_BYTES,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.spool_after_s = spool_after_s
        self.max_write_bytes = max_write_bytes
        self.max_hedged_bytes = max_hedged_bytes
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # segments being written (in parallel: concurrent fsyncs share a journal commit);
        # the replayer takes nothing at or past the oldest of them, which keeps the order
        self._storing: set[int] = set()
        self._inflight: dict[int, int] = {}  # seq -> bytes: spooled, still being written
        self._landed_event = asyncio.Event()  # set when a hedged write finishes
        self._writes: set[asyncio.Task[None]] = set()
        self._spooling = False  # for the log: say once when spooling starts
        self._store_error: str | None = None  # the last segment write failed, and why
        self._progress_at = time.monotonic()  # the backlog last began or shrank
        # lines InfluxDB refused lately: (monotonic time, lines, the last reason)
        self._refusals: collections.deque[tuple[float, int, str]] = collections.deque()

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
        """InfluxDB answers (``problems`` says what else stands in the way)."""
        return await self.sink.ready()

    def problems(self) -> list[str]:
        """Why batches are not going through now: InfluxDB writes failing, a segment
        that could not be written (a full disk), the spool nearly full, or a backlog no
        replay has shrunk for ``GROWING_S``. Empty when all is well."""
        out = list(self.sink.problems())
        if self._store_error is not None:
            out.append(f"spool cannot store: {self._store_error}")
        spool = self.spool
        if spool.bytes >= spool.max_bytes * NEARLY_FULL:
            out.append(f"spool nearly full: {spool.bytes} of {spool.max_bytes} bytes")
        if self._backlog():
            idle = time.monotonic() - self._progress_at
            if idle >= GROWING_S:
                out.append(
                    f"spool growing: {spool.bytes} bytes wait for InfluxDB, and no replay "
                    f"has shrunk them for {idle:.0f} s"
                )
        return out

    def warnings(self) -> list[str]:
        """What an operator must know though batches go through: InfluxDB refusing lines
        (a probe's bad values, or InfluxDB at one of its limits) in the last
        ``REFUSED_WINDOW_S``. Other probes' points are stored meanwhile."""
        now = time.monotonic()
        while self._refusals and now - self._refusals[0][0] > REFUSED_WINDOW_S:
            self._refusals.popleft()
        if not self._refusals:
            return []
        n = sum(r[1] for r in self._refusals)
        return [
            f"InfluxDB refused {n} lines in the last {REFUSED_WINDOW_S / 60:.0f} min, set "
            f"aside in {self.spool.refused_dir}; the last because: {self._refusals[-1][2]}"
        ]

    async def _hedges_drain(self) -> bool:
        """Backpressure: every hedged write holds its body in memory until InfluxDB
        confirms it, so while they hold ``max_hedged_bytes`` a request waits (its answer
        is delayed) for one to land, ``MAX_HEDGE_WAIT_S`` at most. False: still full."""
        if sum(self._inflight.values()) < self.max_hedged_bytes:
            return True
        try:
            async with asyncio.timeout(MAX_HEDGE_WAIT_S):
                while sum(self._inflight.values()) >= self.max_hedged_bytes:
                    self._landed_event.clear()
                    await self._landed_event.wait()
        except TimeoutError:
            return False
        return True

    def _backlog(self) -> bool:
        """Points wait in the spool (not counting hedged writes still under way)."""
        return self.spool.bytes > sum(self._inflight.values())

    async def write(self, body: bytes) -> None:
        if not body:
            return
        if self._backlog():  # keep order: new points queue behind the backlog
            await self._to_spool(body)
            return
        if not await self._hedges_drain():
            # InfluxDB stays this far behind: new points go to the spool alone, and the
            # replay delivers them once it catches up
            metrics.SPOOLED_UNTRIED.inc()
            await self._to_spool(body)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        done, _ = await asyncio.wait({task}, timeout=self.spool_after_s)
        if not done:  # slow: durable in the spool now; the write goes on
            seq = await self._to_spool(body, hedge=task)
            log.debug("InfluxDB slower than %g s; segment %d spooled", self.spool_after_s, seq)
            return
        exc = task.exception()
        if exc is None:
            self._store_error = None  # batches go through: a full disk is not in the way
            return
        if not isinstance(exc, SinkUnavailable):
            raise exc
        if not self._spooling:
            log.warning("%s; spooling until InfluxDB takes writes again", exc)
            self._spooling = True
        await self._to_spool(body)

    async def _deliver(self, *parts: bytes) -> None:
        """Store ``parts`` (segments, or one body) in InfluxDB, in writes of at most
        ``max_write_bytes``; lines it refuses are found and set aside. Raises
        ``SinkUnavailable`` when InfluxDB cannot take writes now (then nothing is set
        aside: the parts are delivered again later)."""
        refused: list[tuple[bytes, str]] = []
        for group in _groups(list(parts), self.max_write_bytes):
            await self._write_parts(group, refused)
        if refused:
            try:
                where = await asyncio.to_thread(self.spool.set_aside, refused)
            except OSError as exc:  # a full disk: deliver it all again later
                raise SinkUnavailable(f"collector spool: cannot set lines aside: {exc}") from None
            metrics.POINTS_SET_ASIDE.inc(len(refused))
            for _, reason in refused:
                metrics.POINTS_REFUSED_BY.labels(refusal_kind(reason)).inc()
            self._refusals.append((time.monotonic(), len(refused), refused[-1][1][:300]))
            while len(self._refusals) > 1000:
                self._refusals.popleft()
            log.error(
                "InfluxDB refuses %d lines (%s); set aside in %s, the rest stored",
                len(refused),
                refused[0][1],
                where,
            )

    async def _write_parts(self, group: list[bytes], refused: list[tuple[bytes, str]]) -> None:
        """Write ``group`` in one; when refused, split along the parts, then within one."""
        if len(group) == 1:
            await self._write_or_split(group[0], refused, [MAX_SPLITS])
            return
        try:
            await self.sink.write(b"".join(group))
        except SinkRefused:
            half = len(group) // 2
            await self._write_parts(group[:half], refused)
            await self._write_parts(group[half:], refused)

    async def _write_or_split(
        self, piece: bytes, refused: list[tuple[bytes, str]], splits: list[int]
    ) -> None:
        if len(piece) > self.max_write_bytes:  # one line over the limit: never sent
            refused.append((piece, f"a line over {self.max_write_bytes} bytes"))
            return
        try:
            await self.sink.write(piece)
        except SinkRefused as exc:
            lines = [line for line in piece.split(b"\n") if line.strip()]
            everything = exc.dropped is not None and exc.dropped >= len(lines)
            if len(lines) <= 1 or everything or splits[0] <= 0:
                why = str(exc)
                if len(lines) > 1 and not everything:  # out of splits
                    why += (
                        f" (InfluxDB refused some of these {len(lines)} lines and stored the "
                        "others; not split further)"
                        if exc.partial
                        else f" (InfluxDB refused these {len(lines)} lines together; not "
                        "split further)"
                    )
                refused.extend((line, why) for line in lines)
                return
            splits[0] -= 1
            first, second = _halves(piece)
            await self._write_or_split(first, refused, splits)
            await self._write_or_split(second, refused, splits)

    async def _to_spool(self, body: bytes, hedge: asyncio.Task[None] | None = None) -> int:
        had_backlog = self._backlog()
        seq = self.spool.reserve(body)  # SpoolFull -> 503, before anything is written
        if hedge is not None:
            self._inflight[seq] = len(body)
        self._storing.add(seq)
        try:
            await asyncio.to_thread(self.spool.store, seq, body)
        except OSError as exc:  # a full disk: the file's .tmp is gone already
            self._inflight.pop(seq, None)
            self.spool.unreserve(len(body))
            if self._store_error is None:
                log.error("collector spool cannot store a segment: %s", exc)
            self._store_error = str(exc)
            raise SinkUnavailable(f"collector spool: {exc}") from None
        finally:
            self._storing.discard(seq)
        self._store_error = None
        if not had_backlog:
            self._progress_at = time.monotonic()
        self.spool.stored(seq, len(body))
        metrics.SPOOLED.inc(points(body))
        self._wake.set()  # even for a hedge: segments may wait behind this one
        if hedge is not None:
            hedge.add_done_callback(lambda t: self._landed(seq, t))
        return seq

    def _landed(self, seq: int, task: asyncio.Task[None]) -> None:
        """A hedged write finished: its segment is deleted, or left for the replayer."""
        self._inflight.pop(seq, None)
        self._landed_event.set()
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
        parts, gone = await asyncio.to_thread(self.spool.read, seqs)
        if gone:
            log.warning("spool segments %s vanished or cannot be read; skipped", gone)
            self.spool.remove(gone)
            seqs = [s for s in seqs if s not in gone]
        try:
            await self._deliver(*parts)
        except SinkUnavailable as exc:
            log.info("spool replay waits: %s (%d bytes waiting)", exc, self.spool.bytes)
            return False
        self.spool.remove(seqs)
        self._progress_at = time.monotonic()
        metrics.REPLAYED.inc(sum(points(part) for part in parts))
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
