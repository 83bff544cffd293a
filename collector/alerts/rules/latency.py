"""``latency``: a series' median over the window against its own baseline, per site."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

import msgspec

from collector.alerts.rules.base import (
    Inputs,
    RuleSettings,
    TargetSettings,
    Verdict,
    median,
    window,
)
from collector.alerts.rules.regional import QuorumRule
from collector.alerts.window import Sample, Series


class LatencySettings(RuleSettings, frozen=True):
    """Each judged kind's value field (dns ``rtt_ms``, http ``ttfb_ms``) against each
    series' own baseline."""

    window_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    # degraded: median over the window >= factor x baseline and >= baseline + min_delta_ms
    factor: Annotated[float, msgspec.Meta(gt=1, le=1000)] = 2.0
    min_delta_ms: Annotated[float, msgspec.Meta(ge=0)] = 20.0
    # or the last onset_samples answers each past that threshold (a fast onset)
    onset_samples: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    # while firing, the line is baseline + (threshold - baseline) x (1 - hysteresis)
    hysteresis: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1


def judge_latency(
    s: Series,
    rule: LatencySettings,
    at: int,
    baseline: Callable[[str, str, str, str], tuple[float, int] | None],
    firing: bool,
) -> Verdict | None:
    """Degraded when, at one of the sites that answered, the median over the window is
    at least ``factor`` x the baseline and ``min_delta_ms`` above it, or the last
    ``onset_samples`` answers all are. While the alert fires, the line is lower (the
    hysteresis line) for both: an alert that fired on a fast onset is not resolved by a
    median still made of the samples from before it. None when no site that answered
    has a baseline."""
    by_site: dict[str, list[Sample]] = defaultdict(list)
    for x in window(s.samples, at, rule.window_s):
        if x.value is not None:
            by_site[x.site].append(x)
    best: Verdict | None = None
    # the site answering last first: the verdict is about where the probe is now
    for site, xs in sorted(by_site.items(), key=lambda kv: -kv[1][-1].ts):
        base = baseline(s.kind, s.probe, s.target, site)
        if base is None:
            continue
        b = base[0]
        threshold = max(rule.factor * b, b + rule.min_delta_ms)
        recovered = b + (threshold - b) * (1 - rule.hysteresis)
        values = [x.value for x in xs if x.value is not None]
        mid = statistics.median(values)
        recent = values[-rule.onset_samples :]
        line = recovered if firing else threshold
        if mid >= line:
            return Verdict(True, mid, b, samples=len(values))
        if len(recent) >= rule.onset_samples and min(recent) >= line:
            return Verdict(True, statistics.median(recent), b, samples=len(values))
        if best is None:
            best = Verdict(False, mid, b, samples=len(values))
    return best


class Latency(QuorumRule[LatencySettings]):
    name: ClassVar[str] = "latency"
    alertname: ClassVar[str] = "latency"
    settings: ClassVar[type[LatencySettings]] = LatencySettings
    baseline_is: ClassVar[str] = "median of the previous 24 h"
    line: ClassVar[Literal["baseline", "threshold"]] = "baseline"
    doc: ClassVar[str] = "a region's probes slower than their own baselines"

    def judge(
        self, s: Series, settings: LatencySettings, inp: Inputs, firing: bool
    ) -> Verdict | None:
        return judge_latency(s, settings, inp.at, inp.baseline, firing)

    def describe(
        self,
        region: str,
        target: str,
        bad: list[tuple[str, Verdict]],
        who: str,
        st: TargetSettings,
    ) -> tuple[float, float | None, str, str]:
        value = median(v.value for _, v in bad)
        base = median(v.baseline for _, v in bad if v.baseline is not None)
        summary = (
            f"{region}: {target} latency {value:.1f} ms, {value / base:.1f}x its baseline "
            f"{base:.1f} ms, seen by {who}"
        )
        return value, base, "ms", summary


RULE = Latency()

__all__ = ["RULE", "Latency", "LatencySettings", "judge_latency"]
