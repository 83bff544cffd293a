"""What the collector knows of one check kind: the :class:`Kind` a kind's module exports.

The probe's check seam (``probe/checks/``) has a collector side, and this is it: the
record's InfluxDB measurement and schema row, its point mapping, what the alert rules
and the rollups read of it, and what the status page shows of it. Code outside a kind's
own module reads these fields and never branches on the kind's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from collector.identity import Identity
from probe.wire import Measurement

R = TypeVar("R", bound=Measurement)

#: the tags every point of a probe's record carries, from the registry
IDENTITY_TAGS: tuple[str, ...] = ("probe", "region", "country")


def words(text: str) -> tuple[str, ...]:
    """``"a b c"`` as ``("a", "b", "c")``: schema rows written as the docs write them."""
    return tuple(text.split())


#: the tags whose values a probe chooses and that name series (the identity tags come
#: from the registry): what a probe's budget of new series counts, and what InfluxDB's
#: max-values-per-tag is watched for
SERIES_TAGS: tuple[str, ...] = ("target", "site", "qname", "server", "ip")

#: sections of the status page a kind can feed (collector/web/status.py):
#: ``latency`` (p50, p95, availability per region and target), ``median`` (each probe's
#: median on the map), ``sites`` (the anycast site each region reaches), ``ttfb`` (the
#: phases of a page fetch), ``probes`` (the heartbeats)
StatusSection = Literal["latency", "median", "sites", "ttfb", "probes"]


@dataclass(frozen=True, slots=True)
class Alerting:
    """What the alert rules and the baselines read of a kind's points.

    ``value``: the field judged for latency and rolled up into ``rollup_5m`` (a time in
    ms). A failed sample is one whose ``rcode`` tag is one of the errors rule's
    ``dns_rcodes`` (``by_rcode``), or else one whose ``ok`` field is false. ``site``:
    its points carry the anycast site that answered (a series per site, catchment
    events); ``serial``: they carry SOA serials (propagation).
    """

    value: str
    by_rcode: bool = False
    site: bool = False
    serial: bool = False


@dataclass(frozen=True)
class Kind(Generic[R]):
    """The collector's side of one check kind.

    ``tags`` and ``fields`` are its row of the InfluxDB schema (docs/design.md); a test
    holds every line ``to_line`` makes to them, and holds the table in docs/design.md to
    them.
    """

    name: str  # the wire record's ``kind``
    record: type[R]
    measurement: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    #: the line-protocol line of one record (raises ``Unrepresentable``)
    to_line: Callable[[R, Identity], str]
    alerting: Alerting | None = None
    status: frozenset[StatusSection] = frozenset()


__all__ = ["IDENTITY_TAGS", "SERIES_TAGS", "Alerting", "Kind", "StatusSection", "words"]
