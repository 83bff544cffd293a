"""Wire records to points of the InfluxDB schema (docs/design.md), through each kind's
collector side (``collector.kinds``).

The probe's identity tags (probe, region, country) come from the registry, never from the
body. A record whose values line protocol or InfluxDB cannot carry (see
``collector.store.lineproto``: NUL, integers beyond int64, over-long tags and strings)
raises ``Unrepresentable``, so no line made here is one InfluxDB refuses.
"""

from __future__ import annotations

from collector.identity import Identity
from collector.kinds import to_line

__all__ = ["Identity", "to_line"]
