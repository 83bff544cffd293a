"""The collector's side of the probe's heartbeat (record kind ``probe``): one point per
heartbeat in ``probe``, with the probe's coordinates from the registry."""

from __future__ import annotations

from typing import Final

from collector.identity import Identity
from collector.kinds.base import IDENTITY_TAGS, Kind
from collector.store.lineproto import FieldValue, line
from probe.wire import ProbeRecord


def _probe_line(r: ProbeRecord, who: Identity) -> str:
    tags = {"probe": who.probe, "region": who.region, "country": who.country}
    fields: dict[str, FieldValue | None] = {
        "lat": who.lat,
        "lon": who.lon,
        "uptime_s": r.uptime_s,
        "spool_depth": r.spool_depth,
        "dropped": r.dropped,
        "rejected": r.rejected,
    }
    return line(
        "probe",
        {**tags, "version": r.version},
        {k: v for k, v in fields.items() if v is not None},
        r.ts,
    )


KIND: Final = Kind(
    name="probe",
    record=ProbeRecord,
    measurement="probe",
    tags=(*IDENTITY_TAGS, "version"),
    fields=("lat", "lon", "uptime_s", "spool_depth", "dropped", "rejected"),
    to_line=_probe_line,
    status=frozenset({"probes"}),
)

__all__ = ["KIND"]
