"""The seven popwatch dashboards: one module per dashboard, each with a ``build()`` that
returns its :class:`Board`, and this table of them.

Every panel's queries are InfluxQL built with :mod:`dashboards.influxql` (over the
collector's query builder); which question each dashboard answers, and how to read it,
is in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from dashboards import catchment, fleet, overview, paths, propagation, region, ttfb
from dashboards.board import Board

#: file name (without .json) -> the function that builds it
DASHBOARDS: Final[dict[str, Callable[[], Board]]] = {
    "overview": overview.build,
    "region": region.build,
    "catchment": catchment.build,
    "propagation": propagation.build,
    "ttfb": ttfb.build,
    "fleet": fleet.build,
    "paths": paths.build,
}
