"""What every rule shares: the :class:`Rule` seam, the would-be alerts it returns
(:class:`Condition`), and what one evaluation sees (:class:`Inputs`).

Pure: no I/O, no clock. An evaluation runs the rules of ``collector.alerts.rules.RULES``
in three steps, each a method of :class:`Rule` with a default that does nothing:

1. ``judge``: each probe on each series it measured in the window (a :class:`Verdict`:
   degraded or not, with its value), for the rules that judge series;
2. ``exclude``: the probes to leave out of every regional quorum (sick probes), with
   the conditions that say so;
3. ``assess``: the conditions that hold now, from the verdicts of step 1 and the
   healthy probes.

The engine adds the waits (``for_s``, ``keep_firing_for_s``) to what ``assess`` returns.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

import msgspec

from collector.alerts.window import Sample, Series, Snapshot
from probe.wire import NS

if TYPE_CHECKING:
    from collector.alerts.config import AlertsConfig
    from collector.alerts.inflation import Figure
    from collector.alerts.rollup import Baseline

#: an alert's identity: its labels, sorted
Labels = tuple[tuple[str, str], ...]


def labels(**kw: str) -> Labels:
    """Labels without the empty ones, sorted."""
    return tuple(sorted((k, v) for k, v in kw.items() if v))


class RuleSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A rule's keys under ``alerts.rules.NAME``; every rule has ``enabled``."""

    enabled: bool = True


class TargetSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to one target: its group's settings over the global ones.
    ``rules`` holds the rules a group may set (``Rule.per_target``)."""

    group: str | None
    quorum: int
    for_s: float
    keep_firing_for_s: float
    rules: msgspec.Struct


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule that holds now: what would fire, with what it saw."""

    labels: Labels
    value: float
    unit: str  # "ms", "ratio", "s", "probes", "share"
    baseline: float | None
    probes: tuple[str, ...]
    of: int  # probes that could have seen it
    summary: str
    for_s: float
    keep_firing_for_s: float
    extra: tuple[tuple[str, str], ...] = ()  # more annotations (from_site, to_site, ...)
    #: false: the alert's line is not met now (a firing alert's current value, which a
    #: resolution carries); such a condition counts as gone
    holds: bool = True

    @property
    def rule(self) -> str:
        return dict(self.labels)["alertname"]

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


class Firing:
    """The alerts firing now, asked by rule and labels: each with its labels and the
    probes that fired it (a firing alert's own identity, which its hold keeps)."""

    def __init__(self, firing: Iterable[tuple[Labels, tuple[str, ...]]] = ()) -> None:
        self._keys: dict[tuple[str, str, str, str, str], tuple[Labels, tuple[str, ...]]] = {}
        for lab, probes in firing:
            d = dict(lab)
            key = (
                d["alertname"],
                d.get("region", ""),
                d.get("target", ""),
                d.get("probe", ""),
                d.get("site", ""),
            )
            self._keys[key] = (lab, probes)

    def has(
        self, rule: str, region: str = "", target: str = "", probe: str = "", site: str = ""
    ) -> bool:
        return (rule, region, target, probe, site) in self._keys

    def get(
        self, rule: str, region: str = "", target: str = "", probe: str = "", site: str = ""
    ) -> tuple[Labels, tuple[str, ...]] | None:
        """The firing alert's labels and the probes that fired it, or None."""
        return self._keys.get((rule, region, target, probe, site))

    def probes(self, rule: str) -> set[tuple[str, str]]:
        """(region, probe) of the firing alerts of ``rule`` (probe and silence alerts)."""
        return {(k[1], k[3]) for k in self._keys if k[0] == rule}


@dataclass(slots=True)
class Verdict:
    """One probe on one series, by one rule."""

    degraded: bool  # on this probe's own evidence
    value: float  # latency: ms; errors: share of failures
    baseline: float | None = None
    failures: int = 0
    samples: int = 0
    #: counted toward a regional quorum, whose pooled evidence then decides (errors:
    #: the bare ratio is past the threshold); a degraded verdict leans too
    leans: bool = False
    onset: bool = False  # the last few samples all past the line
    site: str = ""  # the anycast site it is about, where it is about one
    line: float | None = None  # the value it was compared with (latency: ms)

    def __post_init__(self) -> None:
        self.leans = self.leans or self.degraded


@dataclass(slots=True)
class Judged:
    """One probe on one target: each judging rule's verdict, by rule name."""

    series: Series
    settings: TargetSettings
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return any(v.degraded for v in self.verdicts.values())


@dataclass
class Inputs:
    """What one evaluation sees besides the samples."""

    cfg: AlertsConfig
    snap: Snapshot
    settings: Callable[[str, str, str], TargetSettings]  # (target, topology, provider)
    baseline: Callable[[str, str, str, str], Baseline | None]  # kind, probe, target, site
    usual_site: Callable[[str, str, str], str | None]  # kind, probe, target
    firing: Firing
    # anycast target -> (newest serial, site -> (its serial, time)), and when each
    # target's newest serial was first seen
    serials: dict[str, tuple[int, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    newest_since: dict[str, int] = field(default_factory=dict)
    # active probes and their regions, when the registry is at hand
    registered: dict[str, str] | None = None
    served: set[str] | None = None  # the targets the collector serves, when it serves some
    flaps: Callable[[str, str], int] = lambda probe, target: 0
    #: alerts each probe raised alone this evaluation (on targets not served)
    solo: dict[str, int] = field(default_factory=dict)
    #: each probe's anycast inflation per target and lane (collector.alerts.inflation)
    inflation: list[Figure] = field(default_factory=list)

    @property
    def at(self) -> int:
        return self.snap.at


S = TypeVar("S", bound=RuleSettings)


class Rule(Generic[S]):
    """One kind of alert rule: its config section and how it judges.

    ``name`` is its key under ``alerts.rules`` (and under a group's ``rules`` when
    ``per_target``); ``alertname`` the label of its alerts; ``settings`` the struct of
    its keys, whose defaults are the rule's defaults. The three steps (``judge``,
    ``exclude``, ``assess``) are called in that order for every rule, see the module.
    """

    name: ClassVar[str]
    alertname: ClassVar[str]
    settings: ClassVar[type[RuleSettings]]
    #: a group of targets may set it (its settings then come from ``TargetSettings``)
    per_target: ClassVar[bool] = False
    #: ``judge`` gives a verdict per probe and series
    judges: ClassVar[bool] = False
    #: one line for the README's list and ``--help``
    doc: ClassVar[str] = ""
    #: what a condition's ``baseline`` is, in its annotation ("" when it has none)
    baseline_is: ClassVar[str] = ""
    #: whether that number is the series' own baseline (latency) or a threshold the
    #: config sets (errors, silence...): the annotation and the ``alert`` field say which
    line: ClassVar[Literal["baseline", "threshold"]] = "threshold"

    def of(self, rules: msgspec.Struct) -> S:
        """This rule's settings in a ``Rules`` or ``TargetRules`` struct."""
        return cast(S, getattr(rules, self.name))

    def judge(self, s: Series, settings: S, inp: Inputs, firing: bool) -> Verdict | None:
        """One probe on one series (``firing``: its alert fires now); None: no verdict."""
        return None

    def exclude(self, inp: Inputs, judged: list[Judged]) -> tuple[list[Condition], set[str]]:
        """Probes to leave out of every regional quorum, and the conditions saying so."""
        return [], set()

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        """The conditions of this rule that hold now."""
        return []


def window(samples: list[Sample], at: int, window_s: float) -> list[Sample]:
    """The samples newer than ``window_s`` before ``at`` (samples are oldest first)."""
    lo = at - int(window_s * NS)
    i = len(samples)
    while i > 0 and samples[i - 1].ts > lo:
        i -= 1
    return samples[i:]


def _log_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def at_least(f: int, n: int, p: float) -> float:
    """P(X >= f) for X ~ Binomial(n, p): how likely ``f`` or more failures in ``n``
    samples are if the true ratio is ``p``."""
    if f <= 0:
        return 1.0
    if f > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    if f <= n * p:  # at or below the mean: the tail is large, summed from the other end
        return 1.0 - at_most(f - 1, n, p)
    total, k = 0.0, f
    while k <= n:
        term = math.exp(_log_pmf(k, n, p))
        total += term
        if term < total * 1e-12:
            break
        k += 1
    return min(1.0, total)


def at_most(f: int, n: int, p: float) -> float:
    """P(X <= f) for X ~ Binomial(n, p)."""
    if f >= n:
        return 1.0
    if f < 0:
        return 0.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    if f >= n * p:
        return 1.0 - at_least(f + 1, n, p)
    total, k = 0.0, f
    while k >= 0:
        term = math.exp(_log_pmf(k, n, p))
        total += term
        if term < total * 1e-12:
            break
        k -= 1
    return min(1.0, total)


def bounds(f: int, n: int, alpha: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) one-sided bounds of a ratio seen as ``f`` failures in
    ``n`` samples: the lowest and the highest true ratio under which seeing that few or
    that many has a chance of at least ``alpha``. Conservative at every ``n``, where
    the Wilson and normal intervals are too narrow in the far tails that alerting
    lives in."""
    if n <= 0:
        return 0.0, 1.0

    def solve(ok: Callable[[float], bool], lo: float, hi: float) -> float:
        for _ in range(50):  # to 1e-15 of the unit interval
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    lower = 0.0 if f == 0 else solve(lambda p: at_least(f, n, p) < alpha, 0.0, f / n)
    upper = 1.0 if f == n else solve(lambda p: at_most(f, n, p) >= alpha, f / n, 1.0)
    return lower, upper


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def fmt(value: float, unit: str) -> str:
    """A condition's value as annotation text."""
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit in ("ratio", "share"):
        return f"{value:.1%}"
    if unit == "s":
        return f"{value:.0f} s"
    return f"{value:g}"


def by_region_target(judged: list[Judged]) -> dict[tuple[str, str], list[Judged]]:
    """The judged series grouped by (region, target), sorted."""
    groups: dict[tuple[str, str], list[Judged]] = {}
    for j in judged:
        groups.setdefault((j.series.region, j.series.target), []).append(j)
    return dict(sorted(groups.items()))


AnyRule = Rule[Any]

__all__ = [
    "AnyRule",
    "Condition",
    "Firing",
    "Inputs",
    "Judged",
    "Labels",
    "Rule",
    "RuleSettings",
    "TargetSettings",
    "Verdict",
    "at_least",
    "at_most",
    "bounds",
    "by_region_target",
    "fmt",
    "labels",
    "median",
    "window",
]
