"""What the dashboards may query: the collector's schema (``collector.store.schema``,
held to docs/design.md's table by a test), and the dashboards' template variables."""

from __future__ import annotations

from typing import Final, Literal

from collector.store.schema import SCHEMA, fields, tags

Measurement = Literal["dns", "http", "ping", "trace", "probe", "event", "alert", "inflation"]

Variable = Literal["region", "target", "topology", "provider", "probe", "qname"]

#: the dashboards' template variables; each is the tag of the same name
VARIABLES: Final[tuple[Variable, ...]] = (
    "region",
    "target",
    "topology",
    "provider",
    "probe",
    "qname",
)

__all__ = ["SCHEMA", "VARIABLES", "Measurement", "Variable", "fields", "tags"]
