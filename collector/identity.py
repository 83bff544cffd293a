"""Who sent a batch: a probe's identity, from the registry (never from the body)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """A registered probe: its id and region (tags of every point it sends), and where
    it is."""

    probe: str
    region: str
    country: str = ""
    city: str = ""
    lat: float | None = None
    lon: float | None = None
    asn: int | None = None


__all__ = ["Identity"]
