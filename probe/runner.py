"""The runner: owns what every check shares (deadline, failure records, metrics, schedule).

Checks do only their protocol; ``CHECKS`` maps a kind to its check module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, Union

from probe import metrics, net
from probe.checks.dns import DnsJob
from probe.config import AnyTarget, HttpTarget, ProbeConfig, Target
from probe.resolve import ResolveError, resolve
from probe.scheduler import Schedule
from probe.wire import DnsRecord, HttpRecord, Measurement

log = logging.getLogger("popwatch.probe")

if TYPE_CHECKING:
    from probe.checks.http import HttpJob

Job = Union[DnsJob, "HttpJob"]

#: check kind -> its module, which has ``measure(job)`` and ``failure(job, exc, ts)``.
#: A check module is imported when a target first needs it: a probe without http
#: targets never loads aiohttp (about 10 MB of memory).
CHECKS: dict[str, str] = {"dns": "probe.checks.dns", "http": "probe.checks.http"}


@functools.cache
def _check(kind: str) -> tuple[Callable[[Any], Awaitable[Measurement]], Callable[..., Measurement]]:
    module = importlib.import_module(CHECKS[kind])
    return module.measure, module.failure


class RecordSink(Protocol):
    def write(self, record: Measurement) -> None: ...

    def flush(self) -> None: ...


async def run_job(job: Job) -> Measurement:
    """Run one measurement under its outer deadline; never raises for a network fault."""
    started = time.time_ns()
    measure, failure = _check(job.kind)
    try:
        if job.transport == "udp":
            # one datagram exchange (two with CHAOS), each under its own hard deadline:
            # an outer asyncio.timeout would only add cost on the probe's hottest path
            record = await measure(job)
        else:
            async with asyncio.timeout(job.deadline):
                record = await measure(job)
    except TimeoutError as exc:
        record = failure(job, exc, started)
    except Exception as exc:
        log.exception("check %s failed unexpectedly", job.key)
        record = failure(job, exc, started)
    if isinstance(record, DnsRecord):
        _count(job.kind, record.transport, record.rcode)
    elif isinstance(record, HttpRecord):
        outcome = record.error.split(":", 1)[0] if record.error else str(record.status)
        _count(job.kind, job.transport, outcome)
    return record


@functools.lru_cache(maxsize=1024)
def _counter(kind: str, transport: str, outcome: str) -> Any:
    return metrics.MEASUREMENTS.labels(kind, transport, outcome)


def _count(kind: str, transport: str, outcome: str) -> None:
    _counter(kind, transport, outcome).inc()


def expand(target: AnyTarget, addresses: Iterable[tuple[int, str]]) -> list[Job]:
    """Every series of a target: address x transport x query (one URL for http)."""
    if isinstance(target, HttpTarget):
        from probe.checks.http import HttpJob

        return [HttpJob(target)]
    return [
        DnsJob(target, addr, transport, q.qname, q.qtype)
        for fam, addr in addresses
        if fam in target.families
        for transport in target.transports
        for q in target.queries
    ]


class Prober:
    """Runs the schedule of every target until ``stop`` is set."""

    LAG_WARN_S = 1.0
    LOG_EVERY_S = 10.0
    #: runs due within this many seconds are started together: one wake-up per batch
    #: rather than one per run (start times are still reported against the exact grid)
    BATCH_S = 0.002

    def __init__(self, cfg: ProbeConfig, sink: RecordSink) -> None:
        self.cfg = cfg
        self.sink = sink
        self.schedule: Schedule[Job] = Schedule(cfg.id)
        self._addresses: dict[str, list[tuple[int, str]]] = {}
        self._wake = asyncio.Event()  # set when jobs change or stop is asked
        self._slot_free = asyncio.Event()  # set when a run ends while dispatch waits
        self._in_flight = 0
        self._skipped_window = 0
        self._max_lag_window = 0.0
        self._last_report = time.monotonic()
        self.completed = 0
        metrics.IN_FLIGHT.set_function(lambda: self._in_flight)

    async def replace_targets(self, targets: list[AnyTarget]) -> None:
        """Apply a new target list without a restart: series that stay keep their place."""
        # cached addresses stay only for targets that did not change: a target whose
        # server changed must not fall back to the old host's addresses
        new = {t.name: t for t in targets}
        unchanged = {t.name for t in self.cfg.targets if new.get(t.name) == t}
        self.cfg.targets = targets
        self._addresses = {k: v for k, v in self._addresses.items() if k in unchanged}
        await self.resolve_all()
        log.info("targets replaced: %d targets, %d series", len(targets), len(self.schedule))

    async def resolve_all(self) -> None:
        """(Re-)resolve every host-name server and rebuild the job set."""
        sem = asyncio.Semaphore(32)

        async def one(t: Target) -> None:
            async with sem:
                try:
                    self._addresses[t.name] = await resolve(t.server, t.families, self.cfg.resolver)
                except ResolveError as exc:
                    metrics.RESOLVE_FAILURES.inc()
                    log.warning("target %s: %s; keeping the last addresses", t.name, exc)
                except Exception as exc:
                    metrics.RESOLVE_FAILURES.inc()
                    log.warning("target %s: resolving %s failed: %s", t.name, t.server, exc)

        async with asyncio.TaskGroup() as tg:
            for t in self.cfg.targets:
                if isinstance(t, Target):  # an http target resolves as part of its fetch
                    tg.create_task(one(t))
        jobs = [j for t in self.cfg.targets for j in expand(t, self._addresses.get(t.name, []))]
        loop = asyncio.get_running_loop()
        self.schedule.set_jobs(jobs, loop.time(), time.time())
        metrics.SERIES.set(len(self.schedule))
        self._wake.set()

    async def _resolve_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.resolve_interval)
            except TimeoutError:
                await self.resolve_all()

    async def _measure(self, job: Job) -> None:
        try:
            record = await run_job(job)
            self.sink.write(record)
            self.completed += 1
        finally:
            self._in_flight -= 1
            self._slot_free.set()

    def _report_lag(self, lag: float, skipped: int) -> None:
        metrics.LAG.observe(lag)
        if skipped:
            metrics.SKIPPED.inc(skipped)
        self._skipped_window += skipped
        self._max_lag_window = max(self._max_lag_window, lag)
        now = time.monotonic()
        if now - self._last_report < self.LOG_EVERY_S:
            return
        if self._skipped_window or self._max_lag_window > self.LAG_WARN_S:
            log.warning(
                "behind schedule: runs started up to %.2f s late and %d runs were skipped in "
                "the last %.0f s (%d of %d concurrency slots busy); raise concurrency or "
                "intervals, or move targets to another probe",
                self._max_lag_window,
                self._skipped_window,
                now - self._last_report,
                self._in_flight,
                self.cfg.concurrency,
            )
        self._skipped_window = 0
        self._max_lag_window = 0.0
        self._last_report = now

    async def _dispatch(self, stop: asyncio.Event, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            nd = self.schedule.next_due()
            now = loop.time()
            if nd is None or nd > now + self.BATCH_S:
                self._wake.clear()
                wait = 1.0 if nd is None else min(nd - now, 1.0)
                if wait > 0.05:
                    self.sink.flush()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            for due in self.schedule.pop_due(now + self.BATCH_S):
                while self._in_flight >= self.cfg.concurrency:  # bounded concurrency
                    self._slot_free.clear()
                    await self._slot_free.wait()
                lag = max(0.0, loop.time() - due.due)
                if lag >= due.job.interval:
                    # it waited a whole interval for a slot: the next run is due already,
                    # so this one is skipped (and counted), not run stale
                    self._report_lag(lag, due.skipped + 1)
                    continue
                self._report_lag(lag, due.skipped)
                self._in_flight += 1
                tg.create_task(self._measure(due.job))
                if stop.is_set():
                    break

    async def run(self, stop: asyncio.Event) -> None:
        """Resolve, then measure on schedule until ``stop``; in-flight runs finish."""
        net.warm_up()
        await self.resolve_all()
        log.info(
            "probe %s: %d targets, %d series, concurrency %d, timestamping %s",
            self.cfg.id,
            len(self.cfg.targets),
            len(self.schedule),
            self.cfg.concurrency,
            "kernel" if net.kernel_timestamping_available() else "user",
        )

        async def relay_stop() -> None:
            await stop.wait()
            self._wake.set()

        async with asyncio.TaskGroup() as tg:
            resolver = tg.create_task(self._resolve_loop(stop))
            relay = tg.create_task(relay_stop())
            await self._dispatch(stop, tg)
            resolver.cancel()
            relay.cancel()
        self.sink.flush()
        log.info("stopped after %d measurements", self.completed)
