"""Each probe's budget of new series: how one probe is kept from filling InfluxDB's index.

InfluxDB refuses new tag values past its ``max-values-per-tag`` (100,000 by default, per
measurement and tag) and new series past ``max-series-per-database``, for every writer,
until the shard rolls over. One probe that invents a target or a site name per record
would reach those limits in minutes, and from then on every honest probe's first record
of a new target would be refused. So each probe may add new tag values only at a pace:
the values of the tags that name series (``SERIES_TAGS``) a probe has sent before are
remembered, and a record bringing new ones takes one token per new value from the
probe's bucket (``limits.new_series_burst`` deep, refilled at
``limits.new_series_per_hour``). A record whose new values the bucket cannot pay for is
rejected with that reason; the probe logs it, and nothing else it sends is held up.

What is remembered is bounded: the hashes of the values (Python's 64-bit ``hash``, salted
per process), at most ``limits.max_series_per_probe``
per probe (past it the ones not seen for longest are forgotten, and cost a token again).
The memory is each collector's own: behind a load balancer each collector gives a probe
its own budget, and a restarted collector learns a probe's values again from the burst.
"""

from __future__ import annotations

import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from collector.kinds.base import SERIES_TAGS


def values_of(record: object) -> list[tuple[str, str]]:
    """The ``(tag, value)`` pairs of ``SERIES_TAGS`` a record holds."""
    attrs, _ = _of(type(record))
    out = []
    for a in attrs:
        v = getattr(record, a)
        if v is not None:
            out.append((a, str(v)))
    return out


def _of(kind: type) -> tuple[tuple[str, ...], Callable[[object], tuple[object, ...]]]:
    """The ``SERIES_TAGS`` a record type has, and a getter of their values as a tuple."""
    known = _ATTRS.get(kind)
    if known is None:
        fields = getattr(kind, "__struct_fields__", ())
        attrs = tuple(t for t in SERIES_TAGS if t in fields)
        getter: Callable[[object], tuple[object, ...]]
        if len(attrs) > 1:  # a tuple, in C
            getter = operator.attrgetter(*attrs)
        else:
            getter = lambda r: tuple(getattr(r, a) for a in attrs)  # noqa: E731
        known = _ATTRS[kind] = (attrs, getter)
    return known


_ATTRS: dict[type, tuple[tuple[str, ...], Callable[[object], tuple[object, ...]]]] = {}


class _Probe:
    __slots__ = ("at", "known", "level", "series")

    def __init__(self, level: float, at: float) -> None:
        self.known: OrderedDict[int, None] = OrderedDict()  # least recently seen first
        # the value tuples of records admitted (``for_batch``'s keys), all of whose
        # values are in ``known``: emptied whenever a value is forgotten
        self.series: set[tuple[type, tuple[object, ...]]] = set()
        self.level = level
        self.at = at


class SeriesBudget:
    """The tag values each probe has sent, and its bucket of new ones."""

    def __init__(
        self,
        per_hour: float,
        burst: float,
        max_per_probe: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_hour / 3600
        self.burst = burst
        self.max_per_probe = max_per_probe
        self.clock = clock
        self._probes: dict[str, _Probe] = {}

    def admit(self, probe: str, values: Iterable[tuple[str, str]]) -> str | None:
        """Charge ``probe`` for the new ones of a record's ``(tag, value)`` pairs: None
        when the record may be stored, else the reason it may not (nothing is charged
        then, and nothing remembered)."""
        p = self._probes.get(probe)
        now = self.clock()
        if p is None:
            p = self._probes[probe] = _Probe(self.burst, now)
        digests = [(hash((k, v)), k, v) for k, v in values if v]
        new = [(d, k, v) for d, k, v in digests if d not in p.known]
        for d, _, _ in digests:
            if d in p.known:
                p.known.move_to_end(d)
        if not new:
            return None
        p.level = min(self.burst, p.level + (now - p.at) * self.rate)
        p.at = now
        if p.level < len(new):
            _, key, value = new[0]
            return (
                f"over this probe's budget of new series: {key} {value!r} is new, and "
                f"{probe} may add {self.burst:g} new tag values at once and "
                f"{self.rate * 3600:g} an hour after that (limits.new_series_burst, "
                "limits.new_series_per_hour); it has used them"
            )
        p.level -= len(new)
        for d, _, _ in new:
            p.known[d] = None
        if len(p.known) > self.max_per_probe:
            p.series.clear()
            while len(p.known) > self.max_per_probe:
                p.known.popitem(last=False)
        return None

    def for_batch(self, probe: str) -> Callable[[object], str | None]:
        """``admit`` for the records of one batch of ``probe``, for the cost of a set
        lookup each where the record's values are those of a record admitted before (most
        records: a probe has few targets and sites), rather than of hashing and checking
        every value. The values of such a record are not moved up in ``known``'s order:
        the least recently seen go first only among those met outside these lookups
        (which matters only to a probe past ``max_per_probe``). The verdicts are those of
        ``admit``."""
        p = self._probes.get(probe)
        if p is None:
            p = self._probes[probe] = _Probe(self.burst, self.clock())
        admitted = p.series

        def admit(record: object) -> str | None:
            kind = type(record)
            known = _ATTRS.get(kind) or _of(kind)
            key = (kind, known[1](record))
            if key in admitted:
                return None
            why = self.admit(probe, values_of(record))
            if why is None:
                if len(admitted) >= self.max_per_probe:
                    admitted.clear()
                admitted.add(key)
            return why

        return admit

    def known(self, probe: str) -> int:
        """How many tag values of ``probe`` are remembered."""
        p = self._probes.get(probe)
        return len(p.known) if p is not None else 0


__all__ = ["SERIES_TAGS", "SeriesBudget", "values_of"]
