"""Several evaluators, one set of webhook messages: a lease and a delivery log in
InfluxDB.

Two collectors may evaluate alerts at once (for availability). Their evaluations fall
on the same instants of the ``evaluate_every_s`` grid, so they write the same ``alert``
points (InfluxDB keeps one point per series and time), and Alertmanager deduplicates
the alerts both send it. A webhook deduplicates nothing, so exactly one evaluator, the
lease's holder, delivers to the webhooks.

**The lease** is the ``lease`` measurement's series ``name=webhooks``: one point per
evaluation of its holder, at the evaluation's grid instant, field ``holder``. At each
evaluation an evaluator reads the series' last point of the lease's time to live:

- its own: it holds the lease, and renews it (a point at this instant);
- another's: it does not;
- none (the holder stopped renewing): it claims the lease with a point at this instant,
  and holds it from the next evaluation if that point is still its own. Two claims at
  one instant are one point in InfluxDB (the last write wins), so both read the same
  holder back.

InfluxDB has no compare-and-set; this is what stands in for one. An evaluator that
finds another holder drops its undelivered webhook messages: the holder delivers them.

**The delivery log** is the ``notified`` measurement: after each delivery to a webhook,
one point per alert (tags ``alert``, its fingerprint, and ``to``, the webhook's) at the
state change's instant, field ``state``. A new holder reads the log and delivers what
the old one did not. An evaluator that dies after a delivery and before its log point
is written is the one window where a message can arrive twice: a single HTTP round
trip.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from collector.store.influxql import InfluxQL
from collector.store.lineproto import line
from collector.store.query import Between, Fn, Select, Tag
from probe.wire import NS

log = logging.getLogger("popwatch.collector.alerts")

#: the lease's name (the one lease there is: the webhooks')
NAME: Final = "webhooks"
#: how far back a new holder reads the delivery log
LOG_LOOKBACK_S: Final = 3600

Write = Callable[[bytes], Awaitable[None]]


def hook_id(url: str, fmt: str) -> str:
    """A webhook's name in the delivery log: a hash, so no secret of its URL is stored."""
    return hashlib.sha256(f"{fmt} {url}".encode()).hexdigest()[:12]


@dataclass(slots=True)
class Lease:
    """The webhook lease of one evaluator, ``holder`` (stable across its restarts, so a
    restarted evaluator takes its own lease back at once)."""

    influx: InfluxQL
    write: Write
    holder: str
    ttl_s: float
    held: bool = False

    async def check(self, at: int) -> bool:
        """Whether this evaluator holds the lease at ``at`` (epoch ns, a grid instant);
        renews or claims it."""
        result = await self.influx.one(
            Select(
                "lease",
                (Fn("last", "holder"),),
                (Tag("name", NAME), Between(at - int(self.ttl_s * NS), at)),
            )
        )
        rows = [r for s in result for r in s.values]
        last = str(rows[-1][1]) if rows else None
        was = self.held
        self.held = last == self.holder
        if last is None or self.held:
            point = line("lease", {"name": NAME}, {"holder": self.holder}, at)
            await self.write((point + "\n").encode())
        if self.held != was:
            if self.held:
                log.info("alert engine %s: holds the webhook lease; delivers webhooks", self.holder)
            else:
                log.info(
                    "alert engine %s: the webhook lease is %s's; this engine delivers no "
                    "webhooks while it is",
                    self.holder,
                    last or "free (claimed)",
                )
        return self.held


async def delivered(influx: InfluxQL, at: int) -> dict[tuple[str, str], tuple[str, int]]:
    """The delivery log of the hour before ``at``: (webhook, alert) -> (state, instant of
    the state change) of each alert's last delivery."""
    result = await influx.one(
        Select(
            "notified",
            (Fn("last", "state"),),
            (Between(at - LOG_LOOKBACK_S * NS, at),),
            group_by=("alert", "to"),
        )
    )
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for s in result:
        for ts, state in s.values:
            out[(s.tags.get("to", ""), s.tags.get("alert", ""))] = (str(state), int(ts))
    return out


def log_line(to: str, alert: str, state: str, at: int) -> str:
    """The delivery log's point: ``alert``'s change to ``state`` at ``at`` reached ``to``."""
    return line("notified", {"alert": alert, "to": to}, {"state": state}, at)


__all__ = ["LOG_LOOKBACK_S", "NAME", "Lease", "delivered", "hook_id", "log_line"]
