"""``errors``: the share of a series' samples that failed over the window."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

import msgspec

from collector.alerts.rules.base import Inputs, RuleSettings, TargetSettings, Verdict, window
from collector.alerts.rules.regional import QuorumRule
from collector.alerts.window import Sample, Series
from collector.kinds import BY_NAME


class ErrorsSettings(RuleSettings, frozen=True):
    """Failures over the window: DNS rcodes in ``dns_rcodes`` (kinds whose points carry
    an rcode), ``ok`` false for the others (HTTP errors and unexpected statuses)."""

    window_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    max_error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05  # degraded above this
    min_failures: Annotated[int, msgspec.Meta(ge=1)] = 2  # and at least this many
    onset_samples: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2  # or this many in a row
    hysteresis: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
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


def judge_errors(s: Series, rule: ErrorsSettings, at: int, firing: bool) -> Verdict | None:
    """Degraded when more than ``max_error_ratio`` of the window's samples failed (and at
    least ``min_failures``), or the last ``onset_samples`` all did."""
    xs = window(s.samples, at, rule.window_s)
    if not xs:
        return None
    flags = [failed(x, s.kind, rule) for x in xs]
    n, f = len(flags), sum(flags)
    ratio = f / n
    cut = rule.max_error_ratio * (1 - rule.hysteresis) if firing else rule.max_error_ratio
    onset = len(flags) >= rule.onset_samples and all(flags[-rule.onset_samples :])
    degraded = (f >= rule.min_failures and ratio > cut) or onset
    return Verdict(degraded, ratio, None, failures=f, samples=n)


class Errors(QuorumRule[ErrorsSettings]):
    name: ClassVar[str] = "errors"
    alertname: ClassVar[str] = "errors"
    settings: ClassVar[type[ErrorsSettings]] = ErrorsSettings
    baseline_is: ClassVar[str] = "the most failures allowed"
    doc: ClassVar[str] = "a region's probes seeing failures past max_error_ratio"

    def judge(
        self, s: Series, settings: ErrorsSettings, inp: Inputs, firing: bool
    ) -> Verdict | None:
        return judge_errors(s, settings, inp.at, firing)

    def describe(
        self,
        region: str,
        target: str,
        bad: list[tuple[str, Verdict]],
        who: str,
        st: TargetSettings,
    ) -> tuple[float, float | None, str, str]:
        failures = sum(v.failures for _, v in bad)
        samples = sum(v.samples for _, v in bad)
        value = failures / samples
        summary = (
            f"{region}: {target} failing, {failures} of {samples} queries ({value:.0%}), "
            f"seen by {who}"
        )
        return value, self.of(st.rules).max_error_ratio, "ratio", summary


RULE = Errors()

__all__ = ["RULE", "Errors", "ErrorsSettings", "failed", "judge_errors"]
