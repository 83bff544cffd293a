"""What the collector knows of one check kind: the :class:`Kind` a kind's module exports.

The probe's check seam (``probe/checks/``) has a collector side, and this is it: the
record's InfluxDB measurement and schema row, its point mapping, what the alert rules
and the rollups read of it, and what the status page shows of it. Code outside a kind's
own module reads these fields and never branches on the kind's name.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

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
SERIES_TAGS: tuple[str, ...] = ("target", "site", "qname", "server", "ip", "ask")

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


@dataclass(frozen=True, slots=True)
class Askable:
    """How an ask of this kind (``POST /api/v1/asks``, collector/asks) becomes the target
    a probe measures: the kind's side of the ask, as ``once`` is the check's.

    ``spec`` turns the ask's ``target`` and ``options`` into a target spec of
    ``target_type`` (probe.targets: the probe converts the same spec with its check's
    target type), raising ``ValueError`` with a one-line reason; ``host`` is the address
    or name a converted target sends to (the per-target rate, the allow-list) and
    ``series`` how many measurements one round of it makes at most. The ``ask`` command
    line's flags of the kind are ``add_arguments``, read back into options by
    ``options``; ``columns`` are its live table's (title, width, the result row's
    column), ``value`` the field its summary takes the median of.
    """

    target_type: type[Any]
    spec: Callable[[str, dict[str, Any]], dict[str, Any]]
    host: Callable[[Any], str]
    series: Callable[[Any], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    options: Callable[[argparse.Namespace], dict[str, Any]]
    columns: tuple[tuple[str, int, str], ...]
    value: str
    example: str  # an ``ask`` command line of the kind, for --help


def text(v: object) -> str:
    """A tag's value: "" for none (a tag left out of the point)."""
    return "" if v is None else str(v)


def record_tags(r: Any, who: Identity) -> dict[str, str]:
    """The tags the points of every probe record kind carry: the probe's identity (from
    its token), the ask it answers, its target, and the target's topology and provider."""
    return {
        "probe": who.probe,
        "region": who.region,
        "country": who.country,
        "ask": text(r.ask),
        "target": r.target,
        "topology": text(r.topology),
        "provider": text(r.provider),
    }


def server_tags(r: Any, who: Identity) -> dict[str, str]:
    """The tags of a record of one server reached one way: :func:`record_tags`, and the
    server, its family and the method (ping, trace)."""
    return {**record_tags(r, who), "server": r.server, "family": text(r.family), "method": r.method}


#: keys of a target spec an ask's options may not set: the ask sets them itself
RESERVED_OPTIONS: frozenset[str] = frozenset(
    {"name", "kind", "server", "url", "interval", "sites", "site_every"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


def ask_name(host: str) -> str:
    """The ``target`` tag of an ask's records: its host where that is a valid target
    name (an address, a host name), else ``ask``."""
    host = host.strip("[]")
    return host if _NAME_RE.match(host) else "ask"


def server_spec(target: str, options: dict[str, Any]) -> dict[str, Any]:
    """The target spec of an ask whose target is the server (ping, trace): the options
    are its keys (refused where they set what the ask sets itself)."""
    opts = ask_options(options)
    return {
        "name": ask_name(target),
        "topology": opts.pop("topology", "unicast"),
        "server": target,
        "interval": 3600,  # never scheduled: the ask's count and interval_s say when
        **opts,
    }


def flag_options(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """An ``ask`` command line's options of a kind: its flags that were given."""
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def ask_options(options: dict[str, Any]) -> dict[str, Any]:
    """An ask's options, refused (ValueError) where they set what the ask sets itself."""
    for key in options:
        if key in RESERVED_OPTIONS:
            raise ValueError(f"options.{key}: set by the ask itself (its target), not an option")
    return dict(options)


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
    #: how an ask of this kind is made (None: the kind cannot be asked for)
    ask: Askable | None = None


__all__ = [
    "IDENTITY_TAGS",
    "RESERVED_OPTIONS",
    "SERIES_TAGS",
    "Alerting",
    "Askable",
    "Kind",
    "StatusSection",
    "ask_name",
    "ask_options",
    "flag_options",
    "record_tags",
    "server_spec",
    "server_tags",
    "text",
    "words",
]
