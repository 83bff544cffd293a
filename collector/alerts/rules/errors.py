"""``errors``: the share of a series' samples that failed over the window, judged with
its uncertainty.

A failure ratio from a few dozen samples is noisy: a true loss of 5 % gives 2 ± 1.4
failures in 40. So the rule compares the threshold with a Wilson score interval
(:func:`~collector.alerts.rules.base.wilson`) of the region's pooled samples, not with
the bare ratio: it fires when the interval's lower bound (at ``confidence``) is above
``max_error_ratio``, and a firing alert resolves only when the upper bound (at
``resolve_confidence``) is below it. A ratio at the threshold then sits between the
two bounds: it does not fire, or, once fired, does not resolve.

Wilson rather than the normal (Wald) interval: the Wald interval of 0 failures is
[0, 0] whatever the sample count, and it leaves [0, 1] near 0, where loss ratios live;
Wilson's is honest for small counts (0 of 10 is [0, 0.21] at 95 %) and costs the same.
"""

from __future__ import annotations

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
    wilson,
    window,
    z_of,
)
from collector.alerts.rules.regional import QuorumRule
from collector.alerts.window import Sample, Series
from collector.kinds import BY_NAME

Confidence = Annotated[float, msgspec.Meta(ge=0.5, le=0.9999)]


class ErrorsSettings(RuleSettings, frozen=True):
    """Failures over the window: DNS rcodes in ``dns_rcodes`` (kinds whose points carry
    an rcode), ``ok`` false for the others (HTTP errors and unexpected statuses)."""

    window_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    max_error_ratio: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.05
    # fire when the ratio is above max_error_ratio at this confidence (the Wilson lower
    # bound), and at least min_failures failed
    confidence: Confidence = 0.99
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


def failed(x: Sample, kind: str, rule: ErrorsSettings) -> bool:
    """A failed sample: by its rcode where the kind's points carry one, else ``ok``."""
    a = BY_NAME[kind].alerting
    if a is not None and a.by_rcode:
        return x.rcode in rule.dns_rcodes
    return not x.ok


def flags_of(s: Series, rule: ErrorsSettings, at: int) -> list[bool]:
    """Whether each of the window's samples failed, oldest first."""
    return [failed(x, s.kind, rule) for x in window(s.samples, at, rule.window_s)]


def judge_errors(s: Series, rule: ErrorsSettings, at: int, firing: bool) -> Verdict | None:
    """One probe on one series. Degraded (on its own evidence): its Wilson lower bound
    is above ``max_error_ratio`` with at least ``min_failures`` failures, or its last
    ``onset_samples`` all failed; while its own alert fires, until its upper bound is
    below. ``leans``: its bare ratio is above the threshold (what a regional quorum
    counts; the region's pooled samples then carry the evidence)."""
    flags = flags_of(s, rule, at)
    if not flags:
        return None
    n, f = len(flags), sum(flags)
    lower = wilson(f, n, z_of(rule.confidence))[0]
    upper = wilson(f, n, z_of(rule.resolve_confidence))[1]
    onset = n >= rule.onset_samples and all(flags[-rule.onset_samples :])
    if firing:
        degraded = upper >= rule.max_error_ratio or onset
    else:
        degraded = (f >= rule.min_failures and lower > rule.max_error_ratio) or onset
    leans = degraded or (f > 0 and f / n > rule.max_error_ratio)
    return Verdict(degraded, f / n, None, failures=f, samples=n, leans=leans, onset=onset)


def pooled(js: list[Judged], rule: ErrorsSettings, at: int) -> tuple[int, int]:
    """(failures, samples) of the window over the probes of ``js``."""
    f = n = 0
    for j in js:
        flags = flags_of(j.series, rule, at)
        f, n = f + sum(flags), n + len(flags)
    return f, n


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
        f, n = pooled(healthy, rule, inp.at)
        if n == 0:
            return None
        lower = wilson(f, n, z_of(rule.confidence))[0]
        upper = wilson(f, n, z_of(rule.resolve_confidence))[1]
        outage = len([v for _, v in bad if v.onset]) >= min(st.quorum, of)
        if firing:
            holds = upper >= rule.max_error_ratio or outage
            conf, bound, word = rule.resolve_confidence, upper, "upper"
        else:
            holds = (f >= rule.min_failures and lower > rule.max_error_ratio) or outage
            conf, bound, word = rule.confidence, lower, "lower"
            if not holds:
                return None
        ratio = f / n
        who = self.who(bad, of)
        summary = (
            f"{region}: {target} failing, {f} of {n} queries ({ratio:.1%}) over "
            f"{rule.window_s:g} s, {word} bound {bound:.1%} at {conf:.0%} confidence "
            f"against a threshold of {rule.max_error_ratio:.1%}, seen by {who}"
        )
        if firing and not holds:
            summary = (
                f"{region}: {target} recovered, {f} of {n} queries failed ({ratio:.1%}) over "
                f"{rule.window_s:g} s, upper bound {upper:.1%} at {conf:.0%} confidence, "
                f"below the threshold of {rule.max_error_ratio:.1%}"
            )
        evidence = (
            ("samples", str(n)),
            ("failures", str(f)),
            ("confidence", f"{conf:.0%}"),
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

__all__ = ["RULE", "Errors", "ErrorsSettings", "failed", "judge_errors", "pooled"]
