"""Path evidence: traces read back from InfluxDB, a trace compared with the same probe's
trace from before, and the words an operator reads.

A trace taken after an alert fired says little alone (routes change all the time); next
to the same probe's last scheduled trace from before the onset, it says where the path
changed and where the time went. :func:`compare` gives that :class:`Difference`:

* the first hop that differs, and the hops added or gone;
* the hop from which the round trip grew, and by how much (the end of the path against
  the end of the baseline's);
* the site at the end (the final answer's NSID), against the site before.

:class:`Baselines` follows every probe's scheduled traces, so a scheduled trace whose
``path_id`` differs from the one before it is a ``path`` event, with its flaps counted
like catchment flaps. :mod:`collector.alerts.engine` asks for the traces when an alert
fires and puts the difference in the alert.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from collector.alerts.anycast import Event
from collector.alerts.asn import AsnTable
from collector.store.influxql import InfluxQL
from collector.store.influxql import Series as Result
from collector.store.query import Col, Cond, Fn, Select, Span, Tag
from probe.wire import NS

#: the keys of one series of traces: a probe's path to one address by one method
KEY_TAGS: Final = ("probe", "region", "target", "family", "method", "server")
#: a round trip counts as grown when the end of the path is this much slower, and the
#: hop it grew from is the first from which every hop is at least this much slower
GROW_MS: Final = 10.0
#: how far back the last trace from before an onset is looked for
BASELINE_LOOKBACK_S: Final = 86400
#: how far back the engine reads the scheduled traces when it starts
START_LOOKBACK_S: Final = 3600
FLAP_WINDOW_S: Final = 3600

Key = tuple[str, str, str, str, str, str]  # KEY_TAGS' values


@dataclass(frozen=True, slots=True)
class Hop:
    ttl: int
    addr: str | None  # None: no answer at this TTL
    rtt_ms: float | None  # the median of its answers


@dataclass(frozen=True, slots=True)
class Trace:
    """One trace as InfluxDB holds it: its summary point and its hop points."""

    key: Key
    ts: int  # epoch ns of the trace (its summary point)
    path_id: str
    reached: bool
    site: str
    hops: tuple[Hop, ...]
    ask: str = ""

    @property
    def probe(self) -> str:
        return self.key[0]

    @property
    def region(self) -> str:
        return self.key[1]

    @property
    def target(self) -> str:
        return self.key[2]

    def who(self, note: str = "") -> str:
        """Whose trace it is, as the words begin: ``ap-south (probe-1, IPv4)``."""
        fam = f", IPv{self.key[3]}" if self.key[3] else ""
        return f"{self.region} ({self.probe}{fam}{', ' + note if note else ''})"

    @property
    def end(self) -> Hop | None:
        """The last hop that answered."""
        return next((h for h in reversed(self.hops) if h.addr is not None), None)

    @property
    def ends_at(self) -> str:
        """Where it ends, in words: the site, else the last address that answered."""
        if self.site:
            return self.site
        end = self.end
        return end.addr if end is not None and end.addr else "nowhere"


def traces_query(where: Sequence[Cond], lo: int, hi: int) -> Select:
    """Every point (hops and summaries) of the traces matching ``where`` in [lo, hi)."""
    return Select(
        "trace",
        (Col("addr"), Col("rtt_ms"), Col("path_id"), Col("reached"), Col("site")),
        (Span(lo, hi), *where),
        group_by=(*KEY_TAGS, "hop", "ask"),
    )


def assemble(results: Iterable[Result]) -> list[Trace]:
    """The traces in a result of :func:`traces_query`, oldest first. A hop's point is at
    its trace's time plus its TTL (collector/kinds/trace.py); a trace whose summary point
    is missing is left out."""
    summaries: dict[tuple[Key, str, int], tuple[str, bool, str]] = {}
    hops: dict[tuple[Key, str, int], list[Hop]] = defaultdict(list)
    for s in results:
        key: Key = tuple(s.tags.get(t, "") for t in KEY_TAGS)  # type: ignore[assignment]
        hop, ask = s.tags.get("hop", ""), s.tags.get("ask", "")
        for row in s.values:
            ts, addr, rtt, path_id, reached, site = row[:6]
            if hop == "":
                summaries[(key, ask, int(ts))] = (path_id or "", bool(reached), site or "")
            else:
                ttl = int(hop)
                hops[(key, ask, int(ts) - ttl)].append(Hop(ttl, addr or None, rtt))
    out = [
        Trace(
            k[0],
            k[2],
            pid,
            reached,
            site,
            tuple(sorted(hops.get(k, []), key=lambda h: h.ttl)),
            k[1],
        )
        for k, (pid, reached, site) in summaries.items()
    ]
    out.sort(key=lambda t: (t.ts, t.key))
    return out


async def read(influx: InfluxQL, where: Sequence[Cond], lo: int, hi: int) -> list[Trace]:
    [result] = await influx.query([traces_query(where, lo, hi)])
    return assemble(result)


async def last_before(
    influx: InfluxQL, probe: str, target: str, before: int
) -> dict[tuple[str, str], Trace]:
    """Each (family, method)'s last scheduled trace of ``probe`` to ``target`` before
    ``before`` (epoch ns), within a day: the baseline an alert's trace is compared with."""
    where: tuple[Cond, ...] = (Tag("probe", probe), Tag("target", target), Tag("ask", ""))
    lo = before - BASELINE_LOOKBACK_S * NS
    [lasts] = await influx.query(
        [
            Select(
                "trace",
                (Fn("last", "path_id"),),
                (Span(lo, before), *where, Tag("hop", "")),
                group_by=("family", "method"),
            )
        ]
    )
    found = [int(s.values[0][0]) for s in lasts if s.values]
    if not found:
        return {}
    got = await asyncio.gather(*(read(influx, where, ts, ts + 100) for ts in found))
    out: dict[tuple[str, str], Trace] = {}
    for traces in got:
        for t in traces:
            out[(t.key[3], t.key[4])] = t
    return out


@dataclass(frozen=True, slots=True)
class Difference:
    """A trace against the same probe's trace from before."""

    now: Trace
    base: Trace | None
    #: a hop answered from another address, or the path is longer or shorter, or one
    #: reached the destination and the other did not
    changed: bool
    #: the last hop, before any that differs, both answered from the same address: the
    #: path changed after it (0: at the first)
    after: int
    added: tuple[str, ...]  # addresses on the path now that were not on it before
    gone: tuple[str, ...]  # addresses on it before that are not now
    grew_ms: float | None  # the end of the path against the end of the baseline's
    grew_from: int | None  # the hop from which every hop is GROW_MS slower or more

    def words(self, who: str, asn: AsnTable | None = None) -> str:
        """``"ap-south: path changed after hop 2 (198.18.0.1); now ends at ams (was
        sin); +29.5 ms from hop 3"``; ``who`` is the region (and probe) it speaks of.
        With ``asn`` (the operator's prefix table), the last common hop's AS, and the AS
        path where it changed: ``"; AS path now 64500 64502 (was 64500 64501)"``."""
        now, base = self.now, self.base
        if base is None:
            return (
                f"{who}: no trace from before the onset to compare with; now "
                f"{len(now.hops)} hops, ends at {now.ends_at}"
            )
        if self.changed:
            text = f"{who}: path changed "
            if self.after == 0:
                text += "at hop 1"
            else:
                last = next(h.addr for h in base.hops if h.ttl == self.after)
                known = asn.lookup(last) if asn is not None and last else None
                text += f"after hop {self.after} ({last}{f', AS{known}' if known else ''})"
            if not now.reached and base.reached:
                text += f"; no longer reaches {now.key[5]} (last answer: {now.ends_at})"
            elif now.ends_at != base.ends_at:
                text += f"; now ends at {now.ends_at} (was {base.ends_at})"
            else:
                text += f"; still ends at {now.ends_at}"
            if self.added or self.gone:
                text += f"; hops added {', '.join(self.added) or 'none'}"
                text += f", gone {', '.join(self.gone) or 'none'}"
            if asn is not None:
                was = asn.path([h.addr for h in base.hops])
                is_ = asn.path([h.addr for h in now.hops])
                if was != is_:
                    text += f"; AS path now {_as_path(is_)} (was {_as_path(was)})"
        else:
            text = f"{who}: path unchanged ({len(now.hops)} hops, ends at {now.ends_at})"
        if self.grew_ms is not None and abs(self.grew_ms) >= GROW_MS:
            text += f"; {self.grew_ms:+.1f} ms"
            if self.grew_from is not None and self.grew_ms > 0:
                text += f" from hop {self.grew_from}"
        return text

    def event(self, flaps_1h: int | None, message: str) -> Event:
        """The ``event`` point (kind ``path``) of this difference."""
        now, base = self.now, self.base
        return Event(
            kind="path",
            ts=now.ts,
            probe=now.probe,
            region=now.region,
            target=now.target,
            from_site=base.site if base else "",
            to_site=now.site,
            flaps_1h=flaps_1h,
            message=message,
            family=now.key[3],
            from_path=base.path_id if base else "",
            to_path=now.path_id,
            after_hop=self.after,
            added=",".join(self.added),
            gone=",".join(self.gone),
            grew_ms=None if self.grew_ms is None else round(self.grew_ms, 3),
            grew_from_hop=self.grew_from,
            ask=now.ask,
        )


def _as_path(asns: list[int]) -> str:
    return " ".join(str(a) for a in asns) or "unknown"


def compare(base: Trace | None, now: Trace) -> Difference:
    """``now`` against ``base`` (None: there is none). Hops are compared by TTL; a hop
    that did not answer in either trace matches any address there (a lost answer, or a
    router that answers one time in two, is not a new path)."""
    if base is None:
        return Difference(now, None, False, 0, (), (), None, None)
    by_ttl_base = {h.ttl: h for h in base.hops}
    by_ttl_now = {h.ttl: h for h in now.hops}
    after, differs = 0, False
    for ttl in range(1, max(len(now.hops), len(base.hops)) + 1):
        h, b = by_ttl_now.get(ttl), by_ttl_base.get(ttl)
        if h is None or b is None:
            differs = True
            break
        if h.addr is not None and b.addr is not None:
            if h.addr != b.addr:
                differs = True
                break
            after = ttl  # the last hop both answered from the same address
    changed = differs or now.reached != base.reached
    # an address at a TTL the other trace got no answer at is neither added nor gone
    quiet_now = {h.ttl for h in now.hops if h.addr is None}
    quiet_base = {h.ttl for h in base.hops if h.addr is None}
    addrs_now = {h.addr for h in now.hops if h.addr}
    addrs_base = {h.addr for h in base.hops if h.addr}
    added = tuple(
        dict.fromkeys(
            h.addr
            for h in now.hops
            if h.addr and h.addr not in addrs_base and h.ttl not in quiet_base
        )
    )
    gone = tuple(
        dict.fromkeys(
            h.addr
            for h in base.hops
            if h.addr and h.addr not in addrs_now and h.ttl not in quiet_now
        )
    )
    grew_ms = grew_from = None
    end_now, end_base = now.end, base.end
    if (
        end_now is not None
        and end_base is not None
        and end_now.rtt_ms is not None
        and end_base.rtt_ms is not None
        and now.reached == base.reached
    ):
        grew_ms = end_now.rtt_ms - end_base.rtt_ms
        if grew_ms >= GROW_MS:
            grew_from = end_now.ttl
            for h in reversed(now.hops):
                b = by_ttl_base.get(h.ttl)
                if h.rtt_ms is None or b is None or b.rtt_ms is None:
                    continue  # a hop without answers says nothing either way
                if h.rtt_ms - b.rtt_ms < GROW_MS:
                    break
                grew_from = h.ttl
    return Difference(now, base, changed, after, added, gone, grew_ms, grew_from)


class Baselines:
    """Every probe's scheduled traces, followed in time: the last one per series, and
    the ``path`` events of those whose path changed (:func:`compare`: a hop that did
    not answer is no change, though it changes the ``path_id``)."""

    def __init__(self, asn: AsnTable | None = None) -> None:
        self.asn = asn
        self.last: dict[Key, Trace] = {}
        self.moves: dict[Key, list[int]] = defaultdict(list)
        self.done = 0  # epoch ns: traces up to here are followed

    async def update(self, influx: InfluxQL, at: int, settle_ns: int) -> list[Event]:
        """Follow the scheduled traces up to ``at - settle_ns`` (a trace's hop points may
        arrive a moment after its summary); the path events they make."""
        until = at - settle_ns
        lo = self.done if self.done else until - START_LOOKBACK_S * NS
        if until <= lo:
            return []
        first = not self.done
        # a hop's point is its trace's time plus its TTL: read past ``until`` for them
        traces = [t for t in await read(influx, (Tag("ask", ""),), lo, until + 100) if t.ts < until]
        self.done = until
        events = []
        for t in traces:
            before = self.last.get(t.key)
            self.last[t.key] = t
            if before is None:
                continue
            d = compare(before, t)
            if not d.changed:
                continue
            moves = self.moves[t.key]
            moves.append(t.ts)
            cut = t.ts - FLAP_WINDOW_S * NS
            moves[:] = [m for m in moves if m > cut]
            if first:
                continue  # what happened before this engine started: known, not news
            events.append(d.event(len(moves), d.words(t.who(), self.asn)))
        return events

    def flaps(self, key: Key, at: int) -> int:
        cut = at - FLAP_WINDOW_S * NS
        return sum(1 for m in self.moves.get(key, ()) if m > cut)


__all__ = [
    "GROW_MS",
    "KEY_TAGS",
    "Baselines",
    "Difference",
    "Hop",
    "Trace",
    "assemble",
    "compare",
    "last_before",
    "read",
    "traces_query",
]
