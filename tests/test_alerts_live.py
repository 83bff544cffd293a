"""Alerts in real time, through real processes: a steady loss at the threshold that must
not flap, and two evaluators, either killed mid-incident, that must not double anything.

Real InfluxDB 1.6.7, real ``popwatch-collector run`` processes (one taking the probes'
batches, one or two evaluating), a real Alertmanager and the receivers of
tests/support/alertmanager.py, one behind Alertmanager and one as the engine's own JSON
webhook. Time is compressed five-fold against the defaults (a 12 s window of 10 samples
a second per probe, evaluations every second), so a test lasts a minute or two, not ten.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.alertmanager import Alertmanager, Receiver
from support.influx import InfluxDB
from support.procs import Collector

from collector.ingest.registry import Registry

NS = 1_000_000_000
PROBES = {"eu-1": "eu", "eu-2": "eu", "us-1": "us", "us-2": "us"}
RATE = 10  # samples per second per probe
#: each probe loses exactly these of every 100 answers: a steady 6 %, spread out
LOST = {0, 17, 34, 51, 67, 84}


def record(ts: int, failed: bool) -> dict[str, Any]:
    r: dict[str, Any] = {
        "kind": "dns",
        "ts": ts,
        "target": "ns",
        "server": "192.0.2.53",
        "port": 53,
        "transport": "udp",
        "qname": "example.test.",
        "qtype": "SOA",
        "rcode": "TIMEOUT" if failed else "NOERROR",
        "timestamping": "kernel",
        "topology": "unicast",
        "provider": "beta",
    }
    if failed:
        r["error"] = "timeout: no answer within 2 s"
    else:
        r["rtt_ms"] = 12.0
    return r


class Feed:
    """Every probe's samples at ``RATE`` a second, posted each half second to the
    ingest collector; ``fails(probe, n)`` says whether a probe's n-th sample fails."""

    def __init__(self, ingest: Collector, tokens: dict[str, str]) -> None:
        self.ingest, self.tokens = ingest, tokens
        self.fails: Callable[[str, int], bool] = lambda probe, n: False
        self._n = dict.fromkeys(PROBES, 0)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            last = time.time_ns()
            while True:
                await asyncio.sleep(0.5)
                now = time.time_ns()
                step = NS // RATE
                for probe in PROBES:
                    records = []
                    for ts in range(last - last % step + step, now + 1, step):
                        records.append(record(ts, self.fails(probe, self._n[probe])))
                        self._n[probe] += 1
                    body = {
                        "schema": 1,
                        "batch": str(uuid.uuid4()),
                        "sent_at": now,
                        "measurements": records,
                    }
                    headers = {"Authorization": f"Bearer {self.tokens[probe]}"}
                    url = f"{self.ingest.url}/api/v1/measurements"
                    async with session.post(url, json=body, headers=headers) as r:
                        answer = await r.json()
                        assert r.status == 200 and not answer["rejected"], answer
                last = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Stack:
    """An ingest collector and ``n`` evaluators over one database, each evaluator with
    the same config file (``alerts``) and its own data directory."""

    def __init__(self, influx: InfluxDB, tmp: Path, alerts: dict[str, Any], n: int) -> None:
        self.influx, self.db = influx, "live_" + uuid.uuid4().hex[:8]
        data = tmp / "ingest"
        data.mkdir()
        registry = Registry(data / "registry.sqlite")
        self.tokens = {p: registry.add(p, region=r) for p, r in PROBES.items()}
        registry.close()
        self.ingest = Collector(influx, data, self.db)
        conf = tmp / "collector.yaml"
        conf.write_text(yaml.safe_dump({"alerts": {"enabled": True, **alerts}}))
        self.evaluators = []
        for i in range(n):
            d = tmp / f"evaluator-{i}"
            d.mkdir()
            shutil.copy(data / "registry.sqlite", d / "registry.sqlite")
            e = Collector(influx, d, self.db, log=d / "collector.log")
            e.args = ["--config", str(conf)]
            self.evaluators.append(e)
        self.feed = Feed(self.ingest, self.tokens)

    async def start(self) -> None:
        await asyncio.to_thread(self.ingest.start)
        for e in self.evaluators:
            await asyncio.to_thread(e.start)
        self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        for c in (*self.evaluators, self.ingest):
            await asyncio.to_thread(c.stop)

    def holder(self) -> Collector:
        """The evaluator holding the webhook lease now."""
        rows = self.influx.query("SELECT last(holder) FROM lease", db=self.db)
        name = str(rows[0]["last"])
        return next(e for e in self.evaluators if name.endswith(str(e.env["POPWATCH_DATA_DIR"])))


def statuses(rx: Receiver, region: str) -> list[str]:
    """The states of the errors alert of ``region`` as they arrived at ``rx``."""
    return [
        a["status"]
        for a in rx.alerts()
        if a["labels"].get("alertname") == "errors" and a["labels"].get("region") == region
    ]


async def until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.25)


@pytest.fixture
def receivers() -> Any:
    with Receiver() as behind, Receiver() as hook, Alertmanager(behind.url) as am:
        yield behind, hook, am


def alerts_section(am: Alertmanager, hook: Receiver, **over: Any) -> dict[str, Any]:
    """The defaults, five-fold faster: a 12 s window (of 120 samples per probe), for_s 6,
    keep_firing_for_s 12, evaluations every second (``over`` changes any of them)."""
    return {
        "evaluate_every_s": 1,
        "resend_s": 2,
        "for_s": 6,
        "keep_firing_for_s": 12,
        "alertmanager_url": am.url,
        "webhooks": [{"url": hook.url, "format": "json"}],
        "rules": {"errors": {"window_s": 12}, "latency": {"enabled": False}},
        **over,
    }


async def test_a_steady_loss_at_the_threshold_does_not_flap(
    influx: InfluxDB, tmp_path: Path, receivers: Any
) -> None:
    """The lab's flapping case: each probe of two regions loses exactly 6 of every 100
    answers (1.2 x max_error_ratio 0.05), for 36 s (three windows, 36 evaluations;
    the issue saw it flap in three windows at a 60 s window and 5 s evaluations). Behind
    Alertmanager and at the webhook: at most one firing, and no resolution while the
    loss lasts; in ``alert``, at most one state change per region. (The bare ratio with
    its 10 % band went firing, resolved, firing within 180 s at 5 s evaluations.)"""
    behind, hook, am = receivers
    stack = Stack(influx, tmp_path, alerts_section(am, hook), 1)
    stack.feed.fails = lambda probe, n: n % 100 in LOST
    await stack.start()
    try:
        await asyncio.sleep(36)
        rows = influx.query("SELECT state, region FROM alert WHERE rule = 'errors'", db=stack.db)
    finally:
        await stack.stop()
    for region in ("eu", "us"):
        assert statuses(hook, region) in ([], ["firing"]), hook.alerts()
        assert statuses(behind, region) in ([], ["firing"]), behind.alerts()
        assert [r["state"] for r in rows if r["region"] == region] in ([], ["firing"]), rows


@pytest.mark.parametrize("killed", ["holder", "other"])
async def test_two_evaluators_and_a_kill_deliver_each_change_once(
    influx: InfluxDB, tmp_path: Path, receivers: Any, killed: str
) -> None:
    """Two evaluators over one InfluxDB and one Alertmanager. eu's probes stop answering
    (an outage); once the firing notification has arrived, the lease's holder (or the
    other evaluator) is SIGKILLed; eu stays down 5 s more, then answers again. At the
    webhook and behind Alertmanager alike: one firing and one resolution of eu's errors
    alert, nothing of us's, and nothing more in the 5 s after. (A 10 s window, for_s 2 and
    keep_firing_for_s 4: the lease lives 3 evaluations, 3 s, either way.)"""
    behind, hook, am = receivers
    rules = {"errors": {"window_s": 10}, "latency": {"enabled": False}}
    quick = {"for_s": 2, "keep_firing_for_s": 4, "rules": rules}
    stack = Stack(influx, tmp_path, alerts_section(am, hook, **quick), 2)
    down = False
    stack.feed.fails = lambda probe, n: down and PROBES[probe] == "eu"
    await stack.start()
    try:
        await asyncio.sleep(4)
        down = True
        await until(lambda: statuses(hook, "eu") == ["firing"], 40, "the firing at the webhook")
        await until(lambda: statuses(behind, "eu") == ["firing"], 20, "the firing behind AM")
        holder = stack.holder()
        victim = (
            holder if killed == "holder" else next(e for e in stack.evaluators if e is not holder)
        )
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(5)
        down = False
        await until(lambda: "resolved" in statuses(hook, "eu"), 60, "the resolution at the webhook")
        await until(lambda: "resolved" in statuses(behind, "eu"), 30, "the resolution behind AM")
        await asyncio.sleep(5)  # anything doubled arrives meanwhile (re-sends are 2 s apart)
    finally:
        await stack.stop()
    assert statuses(hook, "eu") == ["firing", "resolved"], hook.alerts()
    assert statuses(behind, "eu") == ["firing", "resolved"], behind.alerts()
    assert statuses(hook, "us") == statuses(behind, "us") == []
