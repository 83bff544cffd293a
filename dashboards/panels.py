"""What the dashboards share: the common panel builders, the percentile columns and the
conditions most queries use."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import (
    bargauge,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.board import transform
from dashboards.influxql import Fn, Select, Tag

P50: Final = Fn("percentile", "rtt_ms", "p50", 50)
P95: Final = Fn("percentile", "rtt_ms", "p95", 95)
P99: Final = Fn("percentile", "rtt_ms", "p99", 99)
ANYCAST: Final = Tag("topology", "anycast")
SOA: Final = Tag("qtype", "SOA")
CATCHMENT: Final = Tag("kind", "catchment")


def series(unit: str = "ms", stack: common.StackingMode | None = None) -> timeseries.Panel:
    panel = timeseries.Panel().unit(unit).line_width(1).fill_opacity(10).span_nulls(True)
    panel.legend(
        cb.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max"])
    )
    if stack is not None:
        panel.stacking(cb.StackingConfig().mode(stack)).fill_opacity(60)
    return panel


def bars(unit: str, thresholds: list[tuple[float | None, str]] | None = None) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .unit(unit)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(cb.ReduceDataOptions().values(True).calcs(["lastNotNull"]))
    )
    if thresholds:
        steps = [model.Threshold(value=v, color=c) for v, c in thresholds]
        panel.thresholds(dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def keep_firing(select: Select) -> list[model.DataTransformerConfig]:
    """A state change per row, to each alert's latest state, kept when it is firing."""
    keys = [g for g in select.group_by if g not in ("state", "severity")]
    fields: dict[str, dict[str, object]] = {
        k: {"aggregations": [], "operation": "groupby"} for k in keys
    }
    for c in ("Time", "state", "severity", *select.outputs[: len(select.columns)]):
        fields[c] = {"aggregations": ["last"], "operation": "aggregate"}
    return [
        transform("sortBy", sort=[{"field": "Time", "desc": False}]),
        transform("groupBy", fields=fields),
        transform(
            "filterByValue",
            type="include",
            match="any",
            filters=[
                {
                    "fieldName": "state (last)",
                    "config": {"id": "equal", "options": {"value": "firing"}},
                }
            ],
        ),
    ]
