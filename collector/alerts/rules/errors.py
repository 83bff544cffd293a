"""``errors``: the share of a series' samples that failed over the window, judged with
its uncertainty.

A failure ratio from a few dozen samples is noisy: a true loss of 5 % gives 2 ± 1.4
failures in 40. So the rule tests the region's pooled samples against the threshold
with the exact binomial test, not the bare ratio. It fires when so many failures would
be unlikely (below 1 - ``confidence``) were the true ratio ``max_error_ratio``: the exact
(Clopper-Pearson) lower bound is above it. A firing alert resolves only when so few
would be unlikely (below 1 - ``resolve_confidence``): the upper bound is below it. A
ratio at the threshold sits between the two: it does not fire, or, once fired, does
not resolve.

Each test is tried over the last tenth, the last quarter, the last half and the whole
of the window (``SPANS``), so a step is seen as soon as the recent samples prove it, not
once it fills the window; the chance of error is split between the four (Bonferroni),
so trying four spans does not multiply the false alarms. A window too small to prove
any ratio below the threshold (at 5 % and the defaults, fewer than 86 samples: 0
failures in 85 happen 1.3 % of the time at 5 %) resolves when none of its samples
failed.

Exact rather than Wilson's score interval: Wilson's is too narrow in the far tails
where alerting lives, at small counts (over the short spans, a steady 2.5 % loss at 30
samples a probe fired at a rate of 140 per 10,000 series-hours with it at confidence
0.99, the exact test at 10; see bench/alert_quality.py). Exact bounds are conservative
at every count, and the test costs a short sum of binomial terms.
"""

from __future__ import annotations

import bisect
import re
from typing import Annotated, ClassVar

import msgspec

from collector.alerts.rules.base import (
    Condition,
    Inputs,
    Judged,
    RuleSettings,
    TargetSettings,
    Verdict,
    at_least,
    at_most,
    bounds,
    window,
)
from collector.alerts.rules.regional import QuorumRule
from collector.alerts.window import Sample, Series
from collector.kinds import BY_NAME
from probe.wire import NS

Confidence = Annotated[float, msgspec.Meta(ge=0.5, le=0.9999)]
#: the spans of the window each bound is tried over, as shares of it (newest samples)
SPANS = (0.1, 0.25, 0.5, 1.0)


class ErrorsSettings(RuleSettings, frozen=True):
    """Failures over the window: DNS rcodes in ``dns_rcodes`` (kinds whose points carry
    an rcode), ``ok`` false for the others (HTTP errors and unexpected statuses)."""

    window_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    max_error_ratio: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.05
    # fire when the ratio is above max_error_ratio at this confidence (the exact lower
    # bound), and at least min_failures failed
    confidence: Confidence = 0.999
    min_failures: Annotated[int, msgspec.Meta(ge=1)] = 2
    # resolve when it is below max_error_ratio at this confidence (the upper bound)
    resolve_confidence: Confidence = 0.95
    # or: the last onset_samples of each probe of the quorum all failed (an outage)
    onset_samples: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    dns_rcodes: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["TIMEOUT", "NETERR", "SERVFAIL"]
    )

    def __post_init__(self) -> None:
        for code in self.dns_rcodes:
            if not re.fullmatch(r"[A-Z][A-Z0-9]*", code):
                raise ValueError(f"dns_rcodes: {code!r} is not an rcode name (TIMEOUT, SERVFAIL)")


def flags_of(xs: list[Sample], kind: str, rule: ErrorsSettings) -> list[bool]:
    """Whether each of ``xs`` (one series' samples) failed: by its rcode where the kind's
    points carry one, else ``ok`` (the kind looked up once per series)."""
    a = BY_NAME[kind].alerting
    if a is not None and a.by_rcode:
        codes = set(rule.dns_rcodes)
        return [x.rcode in codes for x in xs]
    return [not x.ok for x in xs]


def judge_errors(s: Series, rule: ErrorsSettings, at: int, firing: bool) -> Verdict | None:
    """One probe on one series. Degraded (on its own evidence): its samples prove the
    ratio above ``max_error_ratio`` (:func:`fires`), or its last ``onset_samples`` all
    failed; while its own alert fires, until they prove it below (:func:`resolves`).
    ``leans``: its bare ratio over one of ``SPANS`` is above the threshold (what a
    regional quorum counts; the region's pooled samples then carry the evidence)."""
    xs = window(s.samples, at, rule.window_s)
    if not xs:
        return None
    flags = flags_of(xs, s.kind, rule)
    counts = _spans(xs, flags, rule, at)
    f, n = counts[-1]
    onset = n >= rule.onset_samples and all(flags[-rule.onset_samples :])
    if firing:
        degraded = resolves(counts, rule) is None or onset
    else:
        degraded = fires(counts, rule) is not None or onset
    leans = degraded or any(k and k / m > rule.max_error_ratio for k, m in counts)
    return Verdict(degraded, f / n, None, failures=f, samples=n, leans=leans, onset=onset)


def _spans(
    xs: list[Sample], flags: list[bool], rule: ErrorsSettings, at: int
) -> list[tuple[int, int]]:
    """(failures, samples) of one series' window samples ``xs`` (oldest first) in each of
    ``SPANS``: one pass, then a binary search per span."""
    failures = [0]
    for bad in flags:
        failures.append(failures[-1] + bad)
    times = [x.ts for x in xs]
    n = len(xs)
    out = []
    for share in SPANS:
        i = bisect.bisect_right(times, at - int(share * rule.window_s * NS))
        out.append((failures[n] - failures[i], n - i))
    return out


def spans(js: list[Judged], rule: ErrorsSettings, at: int) -> list[tuple[int, int]]:
    """(failures, samples) over the probes of ``js`` in each of ``SPANS``, shortest first."""
    return count([j.series for j in js], rule, at)


def count(series: list[Series], rule: ErrorsSettings, at: int) -> list[tuple[int, int]]:
    """(failures, samples) of ``series`` pooled, in each of ``SPANS``, shortest first."""
    total = [[0, 0] for _ in SPANS]
    for one in series:
        xs = window(one.samples, at, rule.window_s)
        flags = flags_of(xs, one.kind, rule)
        for k, (f, n) in enumerate(_spans(xs, flags, rule, at)):
            total[k][0] += f
            total[k][1] += n
    return [(f, n) for f, n in total]


def split(confidence: float) -> float:
    """The chance of error of one of ``SPANS``' tries, so that all of them together keep
    ``confidence``."""
    return (1 - confidence) / len(SPANS)


def fires(counts: list[tuple[int, int]], rule: ErrorsSettings) -> tuple[int, float] | None:
    """The span (its index in ``SPANS``) that proves the ratio above the threshold, and
    its lower bound; or None."""
    alpha, t = split(rule.confidence), rule.max_error_ratio
    for k, (f, n) in enumerate(counts):
        if f < rule.min_failures or f <= n * t:  # at or below the threshold: no proof
            continue
        if at_least(f, n, t) < alpha:
            return k, bounds(f, n, alpha)[0]
    return None


def resolves(counts: list[tuple[int, int]], rule: ErrorsSettings) -> tuple[int, float] | None:
    """The span (its index in ``SPANS``) that proves the ratio below the threshold, and
    its upper bound; or None. A window too small for any proof resolves when it is
    clean."""
    alpha, t = split(rule.resolve_confidence), rule.max_error_ratio
    for k, (f, n) in enumerate(counts):
        if n and f < n * t and at_most(f, n, t) < alpha:
            return k, bounds(f, n, alpha)[1]
    f, n = counts[-1]
    if n and f == 0 and (1 - t) ** n >= alpha:  # 0 of n proves nothing: none is enough
        return len(counts) - 1, bounds(f, n, alpha)[1]
    return None


class Errors(QuorumRule[ErrorsSettings]):
    name: ClassVar[str] = "errors"
    alertname: ClassVar[str] = "errors"
    settings: ClassVar[type[ErrorsSettings]] = ErrorsSettings
    baseline_is: ClassVar[str] = "the most failures allowed"
    doc: ClassVar[str] = "a region's probes failing past max_error_ratio, at a confidence"

    def judge(
        self, s: Series, settings: ErrorsSettings, inp: Inputs, firing: bool
    ) -> Verdict | None:
        return judge_errors(s, settings, inp.at, firing)

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
        """The region's pooled samples (every healthy probe's): fires when their lower
        bound is above the threshold, or the quorum's probes are all failing now (an
        outage); holds while their upper bound is not below it."""
        rule = self.of(st.rules)
        counts = spans(healthy, rule, inp.at)
        f, n = counts[-1]
        if n == 0:
            return None
        outage = len([v for _, v in bad if v.onset]) >= min(st.quorum, of)
        who = self.who(bad, of)
        threshold = f"a threshold of {rule.max_error_ratio:.1%}"
        if firing:
            proof = resolves(counts, rule)
            holds = proof is None or outage
            conf, word = rule.resolve_confidence, "upper"
            if proof is None:  # what holds it: the whole window's upper bound
                proof = (len(counts) - 1, bounds(f, n, split(conf))[1])
        else:
            proof = fires(counts, rule)
            holds = proof is not None or outage
            conf, word = rule.confidence, "lower"
            if not holds:
                return None
            if proof is None:  # an outage: the window's own lower bound
                proof = (len(counts) - 1, bounds(f, n, split(conf))[0])
        k, bound = proof
        pf, pn = counts[k]
        span = f"{rule.window_s * SPANS[k]:g} s"
        ratio = pf / pn if pn else 0.0
        summary = (
            f"{region}: {target} failing, {pf} of {pn} queries ({ratio:.1%}) over {span}, "
            f"{word} bound {bound:.1%} at {conf:.1%} confidence against {threshold}, "
            f"seen by {who}"
        )
        if firing and not holds:
            summary = (
                f"{region}: {target} recovered, {pf} of {pn} queries failed ({ratio:.1%}) "
                f"over {span}, upper bound {bound:.1%} at {conf:.1%} confidence, below "
                f"{threshold}"
            )
        evidence = (
            ("samples", str(pn)),
            ("failures", str(pf)),
            ("confidence", f"{conf:.1%}"),
            ("bound", f"{word} {bound:.1%}"),
        )
        return self.condition(
            region,
            target,
            topology,
            bad,
            of,
            st,
            ratio,
            rule.max_error_ratio,
            "ratio",
            summary,
            extra=evidence,
            holds=holds,
        )

    def describe(
        self,
        region: str,
        target: str,
        bad: list[tuple[str, Verdict]],
        who: str,
        st: TargetSettings,
    ) -> tuple[float, float | None, str, str]:
        """One probe's warning: its own window."""
        rule = self.of(st.rules)
        failures = sum(v.failures for _, v in bad)
        samples = sum(v.samples for _, v in bad)
        value = failures / samples
        summary = (
            f"{region}: {target} failing, {failures} of {samples} queries ({value:.1%}) over "
            f"{rule.window_s:g} s against a threshold of {rule.max_error_ratio:.1%}, "
            f"seen by {who}"
        )
        return value, rule.max_error_ratio, "ratio", summary


RULE = Errors()

__all__ = [
    "RULE",
    "SPANS",
    "Errors",
    "ErrorsSettings",
    "fires",
    "flags_of",
    "judge_errors",
    "resolves",
    "spans",
]
