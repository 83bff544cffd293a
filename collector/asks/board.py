"""The board: the asks a collector knows, the probes waiting for commands, and InfluxDB
as what every collector shares.

An ask made here is written to the ``ask`` measurement (through the collector's sink, so
durable as any point) and handed at once to the chosen probes that long-poll this
collector. Asks made at other collectors behind the same load balancer reach this one
through InfluxDB: while any probe waits here, the board reads the asks of the last few
seconds every ``POLL_S`` (one query, however many probes wait), and wakes the probes an
unknown one names. So a command reaches a probe polling this collector at once when it
was made here, and within ``POLL_S`` plus InfluxDB's write latency when it was made at
another collector. Nothing about an ask lives only in memory: a restarted collector
reads back the asks still running (``refresh`` at start), and what each probe said of
one (``state``) and its results are points too. Every collector that knows a drill
writes its ``event``s when it ends; the points are the same, so InfluxDB keeps one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
from prometheus_client import Gauge

from collector.asks import drill
from collector.asks.model import START_WITHIN_S, Ask, decode, encode
from collector.ingest.limits import Limits
from collector.kinds import BY_NAME
from collector.store.influxql import InfluxQL, QueryError
from collector.store.lineproto import line
from collector.store.query import Ago, Col, Select, Span, Tag
from collector.store.sink import Sink, SinkUnavailable
from collector.store.sink import encode as encode_lines
from probe.wire import NS, AskState, Command

log = logging.getLogger("popwatch.collector.asks")

WAITING: Final = Gauge(
    "popwatch_collector_command_waits", "probes' command long-polls waiting on this collector"
)

#: seconds between reads of the asks other collectors made, while probes wait here
POLL_S: Final = 0.25
#: how often a running drill is checked for having every probe's final word
FINISH_CHECK_S: Final = 1.0


class Board:
    """What one collector knows of the asks, and who waits for them."""

    def __init__(
        self,
        influx: InfluxQL,
        sink: Sink,
        limits: Limits,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.influx = influx
        self.sink = sink
        self.limits = limits
        self.clock_ns = clock_ns
        self.asks: dict[str, Ask] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._finished: set[str] = set()  # drills whose events are written
        self._next_check: dict[str, float] = {}
        self._failing = False
        self.closing = False  # the collector stops: long-polls answer at once
        WAITING.set_function(lambda: self.waiting)

    # ------------------------------------------------------------ commands

    @property
    def waiting(self) -> int:
        """Command long-polls waiting here now."""
        return sum(len(w) for w in self._waiters.values())

    def add(self, ask: Ask) -> bool:
        """Know ``ask``, and wake the probes it names that wait here; False if known."""
        if ask.id in self.asks:
            return False
        self.asks[ask.id] = ask
        for probe in ask.probes:
            for fut in self._waiters.get(probe, ()):
                if not fut.done():
                    fut.set_result(None)
        return True

    def commands_for(self, probe: str, have: set[str]) -> list[Command]:
        """The commands for ``probe`` still to be handed out (made within
        ``START_WITHIN_S``), less those it says it has."""
        cutoff = self.clock_ns() - int(START_WITHIN_S * NS)
        return [
            a.command()
            for a in self.asks.values()
            if a.created_at > cutoff and a.id not in have and probe in a.probes
        ]

    async def wait(self, probe: str, have: set[str], wait_s: float) -> list[Command]:
        """The commands for ``probe``, waiting up to ``wait_s`` for one to be made."""
        found = self.commands_for(probe, have)
        if found or self.closing:
            return found
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(probe, set())
        waiters.add(fut)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await fut
        finally:
            waiters.discard(fut)
            if not waiters:
                self._waiters.pop(probe, None)
        return self.commands_for(probe, have)

    # ------------------------------------------------------------ the store

    async def make(
        self,
        ask_id: str,
        operator: str,
        kind: str,
        spec: dict[str, Any],
        probes: list[str],
        created_at: int,
    ) -> Ask:
        """An ask the collector makes itself (the alert engine's traces, ``operator``
        names it): one round of ``spec`` (a target spec of ``kind``) on ``probes``, kept
        and handed out as any ask. The same ``ask_id`` twice (two evaluators) is one ask.
        Raises ``ValueError`` for a spec its kind refuses, ``SinkUnavailable``."""
        askable = BY_NAME[kind].ask
        if askable is None:
            raise ValueError(f"{kind} cannot be asked for")
        target = msgspec.convert(spec, askable.target_type, strict=True)
        ask = Ask(
            id=ask_id,
            operator=operator,
            kind=kind,
            target=askable.host(target),
            spec=spec,
            host=askable.host(target),
            count=1,
            interval_s=1.0,
            timeout_s=float(getattr(target, "timeout", 5.0)),
            series=askable.series(target),
            probes=probes,
            created_at=created_at,
        )
        if ask.id not in self.asks:
            await self.write(ask)
            self.add(ask)
        return ask

    async def write(self, ask: Ask) -> None:
        """Keep ``ask`` in the ``ask`` measurement (raises ``SinkUnavailable``)."""
        tags = {"id": ask.id, "operator": ask.operator, "type": ask.kind}
        point = line(
            "ask", tags, {"request": encode(ask), "probes": len(ask.probes)}, ask.created_at
        )
        await self.sink.write(encode_lines([point]))

    async def refresh(self, lookback_s: float) -> int:
        """Read the asks made in the last ``lookback_s`` (at any collector); how many
        were new here."""
        rows = await self.influx.one(
            Select("ask", (Col("request"),), (Ago(f"{max(1, int(lookback_s))}s"), Tag("probe", "")))
        )
        new = 0
        for s in rows:
            for row in s.rows():
                try:
                    ask = decode(row["request"])
                except (ValueError, TypeError) as exc:  # a point this collector did not write
                    log.debug("ask point unreadable: %s", exc)
                    continue
                new += self.add(ask)
        return new

    async def find(self, ask_id: str) -> Ask | None:
        """The ask ``ask_id`` if it is younger than ``limits.ask_keep_s``."""
        oldest = self.clock_ns() - int(self.limits.ask_keep_s * NS)
        ask = self.asks.get(ask_id)
        if ask is None:
            keep = f"{int(self.limits.ask_keep_s)}s"
            where = (Tag("id", ask_id), Tag("probe", ""), Ago(keep))
            for s in await self.influx.one(Select("ask", (Col("request"),), where)):
                for row in s.rows():
                    with contextlib.suppress(ValueError, TypeError):
                        ask = decode(row["request"])
            if ask is None:
                return None
            self.add(ask)
        return ask if ask.created_at >= oldest else None

    async def states(self, ask: Ask) -> dict[str, dict[str, Any]]:
        """probe -> what it said of ``ask`` (state, measurements, message)."""
        cols = (Col("measurements"), Col("message"), Col("state"), Col("probe"))
        where = (Tag("id", ask.id), Tag("probe", "", "!="), self._span(ask))
        out: dict[str, dict[str, Any]] = {}
        for s in await self.influx.one(Select("ask", cols, where)):
            for row in s.rows():
                if row.get("probe"):
                    out[row["probe"]] = {
                        "state": row.get("state"),
                        "measurements": row.get("measurements"),
                        "message": row.get("message"),
                    }
        return out

    async def write_state(self, ask: Ask, probe: str, said: AskState) -> None:
        fields: dict[str, str | int] = {"measurements": said.measurements}
        if said.message:
            fields["message"] = said.message
        tags = {"id": ask.id, "probe": probe, "state": said.state, "type": ask.kind}
        await self.sink.write(encode_lines([line("ask", tags, fields, self.clock_ns())]))
        self.notify(ask.id)

    def _span(self, ask: Ask, since: int | None = None) -> Span:
        lo = ask.created_at - NS if since is None else since
        return Span(lo, ask.deadline + 3600 * NS)

    async def results(self, ask: Ask, since: int | None = None) -> list[dict[str, Any]]:
        """The result rows of ``ask`` (from ``since``, epoch ns), as InfluxDB holds them:
        the tags and fields of its kind's measurement, ``time`` the send."""
        kind = BY_NAME[ask.kind]
        cols = tuple(Col(t) for t in kind.tags if t != "ask") + tuple(Col(f) for f in kind.fields)
        where = (Tag("ask", ask.id), self._span(ask, since))
        rows = []
        for s in await self.influx.one(Select(kind.measurement, cols, where)):
            for row in s.rows():
                rows.append({k: v for k, v in row.items() if v is not None and v != ""})
        rows.sort(key=lambda r: (r["time"], r.get("probe", "")))
        return rows

    # ------------------------------------------------------------ results arriving

    def notify(self, ask_id: str) -> None:
        """Results or a state of ``ask_id`` came in here: wake its readers."""
        ev = self._changed.get(ask_id)
        if ev is not None:
            ev.set()

    async def changed(self, ask_id: str, wait_s: float) -> None:
        """Wait until something of ``ask_id`` comes in here, or ``wait_s``."""
        ev = self._changed.setdefault(ask_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await ev.wait()
        ev.clear()

    async def finished(self, ask: Ask) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Whether ``ask`` is over (every probe said done or refused, or its deadline
        passed), and what each probe said."""
        states = await self.states(ask)
        over = self.clock_ns() > ask.deadline or all(p in states for p in ask.probes)
        return over, states

    def active(self) -> list[Ask]:
        """The asks that may still be sending (for the rate bounds)."""
        now = self.clock_ns()
        return [a for a in self.asks.values() if a.sends_until > now]

    # ------------------------------------------------------------ the loop

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """``run`` in the background for the time of the block."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(stop))
        try:
            yield
        finally:
            self.close()
            stop.set()
            await task

    def close(self) -> None:
        """Answer every waiting long-poll now, and every later one at once: a stopping
        collector does not hold its probes (they come back to another, or to it)."""
        self.closing = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        for ev in self._changed.values():
            ev.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Read others' asks while probes wait, write drills' events when they end."""
        try:  # the asks still running, made before this collector started
            await self.refresh(self.limits.max_ask_duration_s + START_WITHIN_S + 60)
        except QueryError as exc:
            log.warning("asks: cannot read the running asks (%s); will retry", exc)
        while not stop.is_set():
            try:
                if self._waiters:
                    await self.refresh(START_WITHIN_S + 5)
                await self._finish_drills()
                self._prune()
                if self._failing:
                    log.info("asks: InfluxDB answers again")
                self._failing = False
            except (QueryError, SinkUnavailable) as exc:
                if not self._failing:
                    log.warning("asks: %s; commands from other collectors wait", exc)
                self._failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await stop.wait()

    async def _finish_drills(self) -> None:
        now = time.monotonic()
        for ask in list(self.asks.values()):
            if not ask.drill or ask.id in self._finished:
                continue
            if self._next_check.get(ask.id, 0.0) > now:
                continue
            self._next_check[ask.id] = now + FINISH_CHECK_S
            over, _ = await self.finished(ask)
            if over:
                await self.write_drill(ask)

    async def write_drill(self, ask: Ask) -> list[drill.Report]:
        """Work out a drill's figures and write them as events (the same points from
        every collector that does it)."""
        value = BY_NAME[ask.kind].ask
        assert value is not None
        reports = drill.analyse(await self.results(ask), value.value)
        lines = drill.events(reports, ask.id, str(ask.spec.get("name", "ask")), ask.created_at)
        if lines:
            await self.sink.write(encode_lines(lines))
        self._finished.add(ask.id)
        log.info(
            "drill %s over: %d series, %d site changes",
            ask.id,
            len(reports),
            sum(r.flips for r in reports),
        )
        return reports

    def _prune(self) -> None:
        """Forget asks well past their deadline (InfluxDB still has them)."""
        now = self.clock_ns()
        for ask_id, ask in list(self.asks.items()):
            if ask.deadline + 120 * NS < now and (not ask.drill or ask_id in self._finished):
                del self.asks[ask_id]
                self._changed.pop(ask_id, None)
                self._next_check.pop(ask_id, None)
                self._finished.discard(ask_id)


__all__ = ["POLL_S", "Board"]
