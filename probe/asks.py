"""Asks, the probe's side: the command long-poll, the measurements asked for, and their
results posted straight back.

A shipping probe keeps one long-poll to its collector, ``GET /api/v1/commands?wait_s=S``
with its own token; it opens no port. A command (``probe.wire.Command``) names a check
kind and a target spec: the probe builds the target with that kind's target type, and
runs ``check(kind).measure`` on its jobs (through the runner's ``run_job``), ``count``
rounds ``interval_s`` apart from the moment the command arrived: any kind of
``probe.checks.CHECKS`` can be asked. Each record carries the ask's id (``ask``) and goes
the normal way, into the shipper's spool (durable), and is also posted at once to
``POST /api/v1/asks/ID/results`` (best effort: the spool has it anyway), at most every
``POST_EVERY_S`` per ask. When every round is measured, the probe says ``done``; a
command it will not run it ``refused``, with why.

The probe bounds what it is asked itself, whatever its collector says: asked
measurements of every ask running at once may not pass ``ask_max_qps`` per second (a
command that would is refused), and only addresses inside a command's ``allow``
networks are measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import ssl
import time
import uuid
from typing import Any, Final

import aiohttp
import msgspec

from probe import USER_AGENT
from probe.checks import CHECKS, Job, check
from probe.configfile import explain
from probe.resolve import ResolveError, resolve
from probe.runner import RecordSink, run_job
from probe.shipper import TooLarge, collector_connector, read_bounded
from probe.wire import SCHEMA_VERSION, AskState, Batch, Command, Commands, Measurement, encode

log = logging.getLogger("popwatch.probe.asks")

#: results of one ask are posted at most this often (the first at once)
POST_EVERY_S: Final = 0.1
#: command ids are remembered this long (the collector hands a command out for 10 s
#: after it is made), and at most this many are told the collector (it takes 256)
REMEMBER_S: Final = 30.0
MAX_HAVE: Final = 256
#: the longest answer read from the collector (a command list, a result's ack): the rest
#: of a longer one is never read
MAX_COMMANDS_BYTES: Final = 1024 * 1024
_MAX_BACKOFF_S: Final = 30.0
_commands: Final = msgspec.json.Decoder(Commands)


class Refused(Exception):
    """A command this probe will not run; ``str()`` says why, in one line."""


class Asks:
    """The command channel of one probe, and the asks it runs."""

    def __init__(
        self,
        base_url: str,
        token: str,
        sink: RecordSink,
        *,
        max_qps: float = 20.0,
        wait_s: float = 25.0,
        resolver: str | None = None,
        tls: ssl.SSLContext | None = None,
        insecure: bool = False,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.sink = sink
        self.max_qps = max_qps
        self.wait_s = wait_s
        self.resolver = resolver
        self._tls = tls
        self._insecure = insecure
        self._got: dict[str, float] = {}  # command id -> when it arrived (monotonic)
        self._rate = 0.0  # asked measurements per second of the asks running now
        self._queue: asyncio.Queue[tuple[str, Measurement | AskState]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.started: dict[str, float] = {}  # ask id -> seconds from arrival to first start
        self.refused: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Long-poll for commands until ``stop``; run each one that arrives."""
        for kind in CHECKS:  # now, not when the first ask of a kind comes (a second of CPU)
            check(kind)
        headers = {"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}
        connector = collector_connector(self.base, self._tls, self._insecure)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            poster = asyncio.create_task(self._post(session))
            try:
                await self._poll(session, stop)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                poster.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poster

    # ------------------------------------------------------------ the long-poll

    async def _poll(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        url = f"{self.base}/api/v1/commands"
        backoff = 1.0
        timeout = aiohttp.ClientTimeout(total=self.wait_s + 15)
        while not stop.is_set():
            now = time.monotonic()
            self._got = {k: t for k, t in self._got.items() if now - t < REMEMBER_S}
            newest = sorted(self._got, key=self._got.__getitem__)[-MAX_HAVE:]
            params = {"wait_s": f"{self.wait_s:g}", "have": ",".join(newest)}
            wait = 0.0
            try:
                async with session.get(
                    url, params=params, timeout=timeout, allow_redirects=False
                ) as resp:
                    body = await read_bounded(resp, MAX_COMMANDS_BYTES)
                    status = resp.status
                if status == 200:
                    for cmd in _commands.decode(body).commands:
                        self.take(cmd)
                    backoff = 1.0
                    continue
                why = body[:200].decode(errors="replace").strip()
                if status == 404:
                    log.info("commands: this collector takes no asks (404); asking again in 60 s")
                    wait = 60.0
                else:
                    log.warning("commands from %s: HTTP %d %s", url, status, why)
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError, TooLarge) as exc:
                log.info("commands from %s: %s", url, exc or type(exc).__name__)
            if not wait:
                wait = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()

    def take(self, cmd: Command) -> None:
        """Start ``cmd`` (once: a command seen before is left alone)."""
        if cmd.id in self._got:
            return
        self._got[cmd.id] = time.monotonic()
        task = asyncio.create_task(self._run(cmd, asyncio.get_running_loop().time()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ running one

    async def _jobs(self, cmd: Command) -> list[Job]:
        if cmd.kind not in CHECKS:
            raise Refused(f"no check kind {cmd.kind!r} here (this probe has {', '.join(CHECKS)})")
        chk = check(cmd.kind)
        try:
            target = msgspec.convert(cmd.target, chk.target_type, strict=False)
        except msgspec.ValidationError as exc:
            fault = explain(chk.target_type, cmd.target, exc)
            why = f"target: {fault.path}: {fault.text}" if fault.path else fault.text
            raise Refused(why) from None
        if getattr(target, "sites", None):  # their addresses would pass the allowed networks
            raise Refused("an ask measures its target alone: it may not list sites")
        addresses: list[tuple[int, str]] = []
        if (host := chk.host(target)) is not None:
            try:
                addresses = await resolve(host[0], host[1], self.resolver)
            except ResolveError as exc:
                raise Refused(str(exc)) from None
            if cmd.allow:
                nets = [ipaddress.ip_network(n, strict=False) for n in cmd.allow]
                addresses = [
                    a for a in addresses if any(ipaddress.ip_address(a[1]) in n for n in nets)
                ]
                if not addresses:
                    raise Refused(f"{host[0]}: no address inside the allowed networks")
        jobs: list[Job] = chk.jobs(target, addresses)
        if not jobs:
            raise Refused("nothing to measure")
        return jobs

    async def _run(self, cmd: Command, arrived: float) -> None:
        try:
            jobs = await self._jobs(cmd)
            rate = len(jobs) / (cmd.interval_s if cmd.count > 1 else 1.0)
            if self._rate + rate > self.max_qps:
                raise Refused(
                    f"over this probe's cap of {self.max_qps:g} asked measurements/s "
                    f"(ask_max_qps): {self._rate:g}/s running, this ask adds {rate:g}/s"
                )
        except Refused as exc:
            self.refused[cmd.id] = str(exc)
            log.warning("ask %s refused: %s", cmd.id, exc)
            self._queue.put_nowait((cmd.id, AskState(state="refused", message=str(exc)[:500])))
            return
        loop = asyncio.get_running_loop()
        self._rate += rate
        made = 0
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(cmd.count):
                    delay = arrived + i * cmd.interval_s - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if i == 0:
                        self.started[cmd.id] = loop.time() - arrived
                        log.info(
                            "ask %s: %d series, %d x every %g s, started %.1f ms after it came",
                            cmd.id, len(jobs), cmd.count, cmd.interval_s,
                            self.started[cmd.id] * 1000,
                        )  # fmt: skip
                    for job in jobs:
                        tg.create_task(self._one(job, cmd.id))
                        made += 1
        finally:
            self._rate -= rate
        self._queue.put_nowait((cmd.id, AskState(state="done", measurements=made)))

    async def _one(self, job: Job, ask_id: str) -> None:
        record = msgspec.structs.replace(await run_job(job), ask=ask_id)
        self.sink.write(record)  # the normal way: the spool
        self._queue.put_nowait((ask_id, record))  # and at once

    # ------------------------------------------------------------ posting back

    async def _post(self, session: aiohttp.ClientSession) -> None:
        """Post results and states as they come, grouped by ask, in their order."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            started = loop.time()
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            records: dict[str, list[Measurement]] = {}
            states: list[tuple[str, AskState]] = []
            for ask_id, item in items:
                if isinstance(item, AskState):
                    states.append((ask_id, item))
                else:
                    records.setdefault(ask_id, []).append(item)
            for ask_id, recs in records.items():
                batch = Batch(
                    schema=SCHEMA_VERSION,
                    batch=str(uuid.uuid4()),
                    sent_at=time.time_ns(),
                    measurements=recs,
                )
                await self._send(session, f"/api/v1/asks/{ask_id}/results", encode(batch))
            for ask_id, said in states:
                body = msgspec.json.encode(said)
                await self._send(session, f"/api/v1/asks/{ask_id}/state", body)
            rest = POST_EVERY_S - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _send(self, session: aiohttp.ClientSession, path: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with session.post(
                self.base + path, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                answer: Any = await read_bounded(resp, MAX_COMMANDS_BYTES)
                if resp.status != 200:
                    log.info("%s: HTTP %d %s", path, resp.status, answer[:200])
        except (aiohttp.ClientError, TimeoutError, TooLarge) as exc:
            # the spool has the records: they arrive the normal way
            log.info("%s: %s", path, exc or type(exc).__name__)


__all__ = ["POST_EVERY_S", "Asks", "Refused"]
