"""The collector's side of the check seam: one module per record kind, one table.

Each module here exports ``KIND``, a :class:`Kind`: its InfluxDB measurement and schema
row, its point mapping (``to_line``), what the alert rules and baselines read of it
(``alerting``) and which status page sections it feeds (``status``). Ingest, the alert
engine, the rollups, the status page and the schema the queries are checked against all
read this table; none of them branches on a kind's name. Adding a check kind to the
collector is its module and its line in :data:`KINDS`.
"""

from __future__ import annotations

from typing import Any, Final

from collector.identity import Identity
from collector.kinds import dns, heartbeat, http, ping, trace
from collector.kinds.base import IDENTITY_TAGS, Alerting, Kind, StatusSection
from probe.wire import Measurement

#: every record kind the collector takes, in the order the status page and the engine
#: read them
KINDS: Final[tuple[Kind[Any], ...]] = (
    dns.KIND,
    http.KIND,
    ping.KIND,
    trace.KIND,
    heartbeat.KIND,
)

BY_NAME: Final[dict[str, Kind[Any]]] = {k.name: k for k in KINDS}
_BY_RECORD: Final[dict[type, Kind[Any]]] = {k.record: k for k in KINDS}


def kind_of(record: Measurement) -> Kind[Any]:
    """The kind of a decoded wire record."""
    return _BY_RECORD[type(record)]


def to_line(record: Measurement, who: Identity) -> str:
    """The line-protocol line of one record (raises ``Unrepresentable``)."""
    return _BY_RECORD[type(record)].to_line(record, who)


def alerted() -> list[Kind[Any]]:
    """The kinds the alert rules judge, in table order."""
    return [k for k in KINDS if k.alerting is not None]


def feeding(section: StatusSection) -> list[Kind[Any]]:
    """The kinds that feed a status page section."""
    return [k for k in KINDS if section in k.status]


__all__ = [
    "BY_NAME",
    "IDENTITY_TAGS",
    "KINDS",
    "Alerting",
    "Identity",
    "Kind",
    "StatusSection",
    "alerted",
    "feeding",
    "kind_of",
    "to_line",
]
