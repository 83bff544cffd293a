"""``latency``: a series' median over the window against its own baseline, per site.

A series' usual latency is not one number: a 5-minute median wanders, and single
answers have a heavy tail. So the line a window's median must pass is the highest of
three floors, each from the series' own day before (:class:`Baseline`):

- ``factor`` x its usual value (the median of its bucket medians, p50);
- that plus ``min_delta_ms``;
- that plus ``spread`` x how far a bucket median usually wanders above it (p90 - p50
  of the bucket medians).

A fast onset needs its last ``onset_samples`` answers each past the line *and* past
the series' usual tail (the median of its buckets' p95s), so that heavy-tailed jitter,
whose single answers pass the median's line every so often, does not fire it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

import msgspec

from collector.alerts.rollup import Baseline
from collector.alerts.rules.base import (
    Condition,
    Inputs,
    Judged,
    RuleSettings,
    TargetSettings,
    Verdict,
    median,
    window,
)
from collector.alerts.rules.regional import QuorumRule
from collector.alerts.window import Sample, Series
from probe.wire import NS

BaselineOf = Callable[[str, str, str, str], Baseline | None]


class LatencySettings(RuleSettings, frozen=True):
    """Each judged kind's value field (dns ``rtt_ms``, http ``ttfb_ms``) against each
    series' own baseline."""

    window_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    # degraded: median over the window >= the line, the highest of factor x baseline,
    # baseline + min_delta_ms and baseline + spread x (p90 - p50 of the bucket medians)
    factor: Annotated[float, msgspec.Meta(gt=1, le=1000)] = 2.0
    min_delta_ms: Annotated[float, msgspec.Meta(ge=0)] = 20.0
    spread: Annotated[float, msgspec.Meta(ge=0, le=100)] = 3.0
    # or the last onset_samples answers each past the line and the usual p95 (a fast onset)
    onset_samples: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    # once fired, the alert holds while the median of its probes' answers of the last
    # hold_s is past baseline + (1 - hysteresis) of the way to the line
    hysteresis: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    hold_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0


def line_of(b: Baseline, rule: LatencySettings) -> float:
    """The value a window's median must reach to be degraded."""
    return max(
        rule.factor * b.p50, b.p50 + rule.min_delta_ms, b.p50 + rule.spread * (b.p90 - b.p50)
    )


def held_line(b: Baseline, rule: LatencySettings) -> float:
    """The lower line a firing alert holds above."""
    return b.p50 + (line_of(b, rule) - b.p50) * (1 - rule.hysteresis)


def _by_site(s: Series, at: int, window_s: float) -> dict[str, list[float]]:
    by_site: dict[str, list[Sample]] = defaultdict(list)
    for x in window(s.samples, at, window_s):
        if x.value is not None:
            by_site[x.site].append(x)
    # the site answering last first: the verdict is about where the probe is now
    ordered = sorted(by_site.items(), key=lambda kv: -kv[1][-1].ts)
    return {site: [x.value for x in xs if x.value is not None] for site, xs in ordered}


def judge_latency(
    s: Series, rule: LatencySettings, at: int, baseline: BaselineOf, firing: bool
) -> Verdict | None:
    """Degraded when, at one of the sites that answered, the median over the window is
    past the line (:func:`line_of`), or the last ``onset_samples`` answers all are and
    all pass the series' usual p95 too. While this probe's own alert fires, the lines
    are lower (:func:`held_line`). None when no site that answered has a baseline."""
    best: Verdict | None = None
    for site, values in _by_site(s, at, rule.window_s).items():
        b = baseline(s.kind, s.probe, s.target, site)
        if b is None:
            continue
        line = held_line(b, rule) if firing else line_of(b, rule)
        onset_line = max(line, b.tail if b.tail is not None else line)
        mid = statistics.median(values)
        recent = values[-rule.onset_samples :]
        n = len(values)
        if mid >= line:
            return Verdict(True, mid, b.p50, samples=n, site=site, line=line)
        if len(recent) >= rule.onset_samples and min(recent) >= onset_line:
            fast = statistics.median(recent)
            return Verdict(True, fast, b.p50, samples=n, site=site, line=line, onset=True)
        if best is None:
            best = Verdict(False, mid, b.p50, samples=n, site=site, line=line)
    return best


def excess(j: Judged, rule: LatencySettings, at: int, baseline: BaselineOf) -> list[float]:
    """One probe's answers of the last ``hold_s`` (its last ``onset_samples`` if fewer),
    each as the share of the way from its site's baseline to its line (0: the baseline,
    1: the line)."""
    s = j.series
    recent = [x for x in s.samples if x.value is not None and x.ts <= at]
    cut = at - int(rule.hold_s * NS)
    kept = [x for x in recent if x.ts > cut] or recent[-rule.onset_samples :]
    out = []
    for x in kept:
        b = baseline(s.kind, s.probe, s.target, x.site)
        assert x.value is not None
        if b is not None:
            out.append((x.value - b.p50) / (line_of(b, rule) - b.p50))
    return out


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

    def region(
        self,
        inp: Inputs,
        region: str,
        target: str,
        topology: str,
        healthy: list[Judged],
        bad: list[tuple[str, Verdict]],
        of: int,
        st: TargetSettings,
        firing: bool,
    ) -> Condition | None:
        """Fires on the quorum's verdicts; once fired, holds while the pooled answers
        of its probes (those that fired it and those degraded now) of the last
        ``hold_s`` have a median past the held line (:func:`held_line`)."""
        if not firing:
            return super().region(inp, region, target, topology, healthy, bad, of, st, False)
        rule = self.of(st.rules)
        names = {p for p, _ in bad}
        pool = [
            x
            for j in healthy
            if j.series.probe in names
            for x in excess(j, rule, inp.at, inp.baseline)
        ]
        holds = bool(pool) and statistics.median(pool) >= 1 - rule.hysteresis
        shown = bad or [(j.series.probe, j.verdicts[self.name]) for j in healthy]
        value, baseline, unit, summary = self.describe(
            region, target, shown, self.who(shown, of), st
        )
        if not holds:
            summary = (
                f"{region}: {target} latency back to {value:.1f} ms against its baseline "
                f"{baseline:.1f} ms, seen by {self.who(shown, of)}"
            )
        return self.condition(
            region, target, topology, shown, of, st, value, baseline, unit, summary, holds=holds
        )

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
        line = median(v.line for _, v in bad if v.line is not None)
        summary = (
            f"{region}: {target} latency {value:.1f} ms, {value / base:.1f}x its baseline "
            f"{base:.1f} ms (line {line:.1f} ms), seen by {who}"
        )
        return value, base, "ms", summary


RULE = Latency()

__all__ = ["RULE", "Latency", "LatencySettings", "excess", "held_line", "judge_latency", "line_of"]
