"""The runner: owns what every check shares (deadline, failure records, metrics, schedule).

Checks do only their protocol. The runner knows a check only through the seam in
:mod:`probe.checks` (``check(kind)``): it never branches on a kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from probe import metrics, net
from probe.checks import AnyCheck, Job, check, check_for
from probe.config import AnyTarget, ProbeConfig
from probe.resolve import ResolveError, resolve
from probe.scheduler import Schedule
from probe.targets import derived_targets
from probe.wire import Measurement

log = logging.getLogger("popwatch.probe")


class RecordSink(Protocol):
    def write(self, record: Measurement) -> None: ...

    def flush(self) -> None: ...


async def run_job(job: Job) -> Measurement:
    """Run one measurement under its outer deadline; never raises for a network fault."""
    started = time.time_ns()
    chk = check(job.kind)
    record: Measurement
    try:
        if job.deadline is None:  # the check bounds every step itself
            record = await chk.measure(job)
        else:
            async with asyncio.timeout(job.deadline):
                record = await chk.measure(job)
    except TimeoutError as exc:
        record = chk.failure(job, exc, started)
    except Exception as exc:
        log.exception("check %s failed unexpectedly", job.key)
        record = chk.failure(job, exc, started)
    _counter(job.kind, job.transport, chk.outcome(record)).inc()
    return record


@functools.lru_cache(maxsize=1024)
def _counter(kind: str, transport: str, outcome: str) -> Any:
    return metrics.MEASUREMENTS.labels(kind, transport, outcome)


@dataclass(frozen=True, eq=False)
class Unresolved:
    """The series of a target whose host has no address yet: each run writes the failure
    records its check gives for that (``Check.unresolved``), so an unresolvable server
    shows up as failures, as an unreachable one does, not as silence."""

    target: AnyTarget
    kind: str
    error: str
    key: str = field(init=False)
    interval: float = field(init=False)
    transport: str = "-"
    deadline: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"unresolved|{_akey(self.target)}")
        object.__setattr__(self, "interval", self.target.interval)


def _akey(target: AnyTarget) -> str:
    """Where a target's resolved addresses are kept: its kind and name."""
    return f"{check_for(target).kind}|{target.name}"


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
        old = {_akey(t): t for t, _ in self._measured()}
        self.cfg.targets = targets
        unchanged = {_akey(t) for t, _ in self._measured() if old.get(_akey(t)) == t}
        self._addresses = {k: v for k, v in self._addresses.items() if k in unchanged}
        await self.resolve_all()
        log.info("targets replaced: %d targets, %d series", len(targets), len(self.schedule))

    def _measured(self) -> list[tuple[AnyTarget, AnyCheck]]:
        """Every target measured, with the ones derived from others (a DNS target's ping)."""
        targets = [*self.cfg.targets, *derived_targets(self.cfg.targets)]
        return [(t, check_for(t)) for t in targets]

    async def resolve_all(self) -> None:
        """(Re-)resolve every host-name server and rebuild the job set."""
        sem = asyncio.Semaphore(32)
        measured = self._measured()

        failed: dict[str, str] = {}

        async def one(key: str, host: str, families: list[int]) -> None:
            async with sem:
                try:
                    self._addresses[key] = await resolve(host, families, self.cfg.resolver)
                except Exception as exc:
                    metrics.RESOLVE_FAILURES.inc()
                    why = str(exc) if isinstance(exc, ResolveError) else f"{host}: {exc}"
                    failed[key] = why
                    log.warning("target %s: %s; keeping the last addresses", key, why)

        async with asyncio.TaskGroup() as tg:
            for t, chk in measured:
                if (host := chk.host(t)) is not None:  # None: resolved by the check itself
                    tg.create_task(one(_akey(t), host[0], list(host[1])))
        jobs: list[Job] = []
        for t, chk in measured:
            key = _akey(t)
            if key in failed and not self._addresses.get(key):
                jobs.append(Unresolved(t, chk.kind, failed[key]))
            else:
                jobs.extend(chk.jobs(t, self._addresses.get(key, [])))
        loop = asyncio.get_running_loop()
        self.schedule.set_jobs(jobs, loop.time(), time.time())
        metrics.SERIES.set(len(self.schedule))
        self._wake.set()

    async def _resolve_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.resolve_interval_s)
            except TimeoutError:
                await self.resolve_all()

    async def _measure(self, job: Job) -> None:
        try:
            if isinstance(job, Unresolved):
                chk = check(job.kind)
                for record in chk.unresolved(job.target, job.error, time.time_ns()):
                    _counter(job.kind, job.transport, chk.outcome(record)).inc()
                    self.sink.write(record)
            else:
                self.sink.write(await run_job(job))
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
