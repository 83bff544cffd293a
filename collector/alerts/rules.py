"""The rules: from one window's samples, baselines and what fires now, the conditions
that hold (each a would-be alert with its value, baseline and probes).

Pure: no I/O, no clock. The engine adds hysteresis (``for``, ``keep_firing_for``).

1. Each probe is judged on each target: *latency* (the window's median against the
   series' baseline, per site) and *errors* (the share of failures).
2. A probe degraded on ``min_share`` of its targets, spanning ``min_spread`` providers or
   topologies, is *sick*, unless the sick probes are most of their region (then it is
   the region). A sick probe raises a ``probe`` alert and is left out of every quorum
   while it is sick or its ``probe`` alert fires.
3. A region's target raises a regional alert when ``quorum`` of its healthy probes (or
   all, if it has fewer) are degraded on it: ``critical`` when two or more agree, else
   ``warning``.
4. ``catchment``: the region's probes on another site than their usual one (the site of
   most of their last day); ``propagation``: a site's SOA serial older than the newest
   for longer than ``max_serial_lag_s``; ``silence``: no heartbeat.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from collector.alerts.config import AlertsConfig, ErrorsRule, LatencyRule, TargetSettings
from collector.alerts.window import NS, Sample, Series, Snapshot

#: an alert's identity: its labels, sorted
Labels = tuple[tuple[str, str], ...]


def labels(**kw: str) -> Labels:
    """Labels without the empty ones, sorted."""
    return tuple(sorted((k, v) for k, v in kw.items() if v))


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
    for_: int
    keep_firing_for: int
    extra: tuple[tuple[str, str], ...] = ()  # more annotations (from_site, to_site, ...)

    @property
    def rule(self) -> str:
        return dict(self.labels)["alertname"]

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


class Firing:
    """The alerts firing now, asked by rule and labels."""

    def __init__(self, firing: Iterable[Labels] = ()) -> None:
        self._keys: set[tuple[str, str, str, str, str]] = set()
        for lab in firing:
            d = dict(lab)
            self._keys.add(
                (
                    d["alertname"],
                    d.get("region", ""),
                    d.get("target", ""),
                    d.get("probe", ""),
                    d.get("site", ""),
                )
            )

    def has(
        self, rule: str, region: str = "", target: str = "", probe: str = "", site: str = ""
    ) -> bool:
        return (rule, region, target, probe, site) in self._keys

    def probes(self, rule: str) -> set[tuple[str, str]]:
        """(region, probe) of the firing alerts of ``rule`` (probe and silence alerts)."""
        return {(k[1], k[3]) for k in self._keys if k[0] == rule}


@dataclass(slots=True)
class Verdict:
    degraded: bool
    value: float  # latency: ms; errors: share of failures
    baseline: float | None = None
    failures: int = 0
    samples: int = 0


@dataclass(slots=True)
class _Judged:
    """One probe on one target."""

    series: Series
    settings: TargetSettings
    latency: Verdict | None = None
    errors: Verdict | None = None

    @property
    def degraded(self) -> bool:
        return bool(
            (self.latency and self.latency.degraded) or (self.errors and self.errors.degraded)
        )


@dataclass
class Inputs:
    """What one evaluation sees besides the samples."""

    cfg: AlertsConfig
    snap: Snapshot
    settings: Callable[[str, str, str], TargetSettings]  # (target, topology, provider)
    baseline: Callable[[str, str, str, str], tuple[float, int] | None]  # kind, probe, target, site
    usual_site: Callable[[str, str], str | None]  # probe, target
    firing: Firing
    # anycast target -> (newest serial, site -> (its serial, time)), and when each
    # target's newest serial was first seen
    serials: dict[str, tuple[int, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    newest_since: dict[str, int] = field(default_factory=dict)
    registered: set[str] | None = None  # active probes, when the registry is at hand
    flaps: Callable[[str, str], int] = lambda probe, target: 0


def _window(samples: list[Sample], at: int, window_s: float) -> list[Sample]:
    lo = at - int(window_s * NS)
    i = len(samples)
    while i > 0 and samples[i - 1].ts > lo:
        i -= 1
    return samples[i:]


def judge_latency(
    s: Series,
    rule: LatencyRule,
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
    for x in _window(s.samples, at, rule.window_s):
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
        median = statistics.median(values)
        recent = values[-rule.onset_samples :]
        line = recovered if firing else threshold
        if median >= line:
            return Verdict(True, median, b, samples=len(values))
        if len(recent) >= rule.onset_samples and min(recent) >= line:
            return Verdict(True, statistics.median(recent), b, samples=len(values))
        if best is None:
            best = Verdict(False, median, b, samples=len(values))
    return best


def failed(x: Sample, kind: str, rule: ErrorsRule) -> bool:
    return x.rcode in rule.dns_rcodes if kind == "dns" else not x.ok


def judge_errors(s: Series, rule: ErrorsRule, at: int, firing: bool) -> Verdict | None:
    """Degraded when more than ``max_error_ratio`` of the window's samples failed (and at
    least ``min_failures``), or the last ``onset_samples`` all did."""
    xs = _window(s.samples, at, rule.window_s)
    if not xs:
        return None
    flags = [failed(x, s.kind, rule) for x in xs]
    n, f = len(flags), sum(flags)
    ratio = f / n
    cut = rule.max_error_ratio * (1 - rule.hysteresis) if firing else rule.max_error_ratio
    onset = len(flags) >= rule.onset_samples and all(flags[-rule.onset_samples :])
    degraded = (f >= rule.min_failures and ratio > cut) or onset
    return Verdict(degraded, ratio, None, failures=f, samples=n)


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit in ("ratio", "share"):
        return f"{value:.1%}"
    if unit == "s":
        return f"{value:.0f} s"
    return f"{value:g}"


#: what a condition's baseline is, by rule
_BASELINE_IS = {
    "latency": "median of the previous 24 h",
    "errors": "the most failures allowed",
    "probe": "the share of targets that makes a probe sick",
    "silence": "missed heartbeats",
    "propagation": "max_serial_lag_s",
}


def annotate(c: Condition) -> dict[str, str]:
    """The condition's value, baseline and probes, as annotation text."""
    out = {
        "summary": c.summary,
        "value": _fmt(c.value, c.unit),
        "probes": f"{', '.join(c.probes)} ({len(c.probes)} of {c.of})",
    }
    if c.baseline is not None:
        out["baseline"] = f"{_fmt(c.baseline, c.unit)} ({_BASELINE_IS.get(c.rule, '')})"
    out.update(c.extra)
    return out


def assess(inp: Inputs) -> list[Condition]:
    """Every condition that holds in this window."""
    judged = _judge(inp)
    out, sick = _sick(inp, judged)
    excluded = sick | {probe for _, probe in inp.firing.probes("probe")}
    groups: dict[tuple[str, str], list[_Judged]] = defaultdict(list)
    for j in judged:
        groups[(j.series.region, j.series.target)].append(j)
    for (region, target), js in sorted(groups.items()):
        healthy = [j for j in js if j.series.probe not in excluded]
        out += _quorum(inp.cfg, region, target, healthy)
        out += _catchment(inp, region, target, healthy)
    out += _propagation(inp, judged)
    out += _silence(inp)
    return out


def _judge(inp: Inputs) -> list[_Judged]:
    """Each probe on each target it measured in the window."""
    at = inp.snap.at
    judged = []
    for s in inp.snap.series.values():
        st = inp.settings(s.target, s.topology, s.provider)
        j = _Judged(s, st)
        for rule in ("latency", "errors"):
            hot = inp.firing.has(rule, s.region, s.target) or inp.firing.has(
                rule, s.region, s.target, s.probe
            )
            if rule == "latency" and st.rules.latency.enabled:
                j.latency = judge_latency(s, st.rules.latency, at, inp.baseline, hot)
            elif rule == "errors" and st.rules.errors.enabled:
                j.errors = judge_errors(s, st.rules.errors, at, hot)
        judged.append(j)
    return judged


def _sick(inp: Inputs, judged: list[_Judged]) -> tuple[list[Condition], set[str]]:
    """The sick probes, and their ``probe`` conditions."""
    rule = inp.cfg.rules.probe_health
    if not rule.enabled:
        return [], set()
    per_probe: dict[str, list[_Judged]] = defaultdict(list)
    for j in judged:
        if j.latency is not None or j.errors is not None:
            per_probe[j.series.probe].append(j)
    region_probes: dict[str, set[str]] = defaultdict(set)
    candidates: dict[str, tuple[str, int, int, int]] = {}  # region, bad, of, spread
    for probe, js in per_probe.items():
        region = js[0].series.region
        region_probes[region].add(probe)
        bad = [j for j in js if j.degraded]
        spread = max(len({j.series.provider for j in bad}), len({j.series.topology for j in bad}))
        if bad and len(bad) >= rule.min_share * len(js) and spread >= rule.min_spread:
            candidates[probe] = (region, len(bad), len(js), spread)
    out, sick = [], set()
    for probe, (region, n_bad, of, spread) in sorted(candidates.items()):
        peers = [p for p, c in candidates.items() if c[0] == region]
        if len(peers) >= 2 and 2 * len(peers) > len(region_probes[region]):
            continue  # most of the region at once: the region, not its probes
        sick.add(probe)
        out.append(
            Condition(
                labels=labels(alertname="probe", severity="info", region=region, probe=probe),
                value=n_bad / of,
                unit="share",
                baseline=rule.min_share,
                probes=(probe,),
                of=1,
                summary=(
                    f"probe {probe} ({region}) is degraded on {n_bad} of its {of} targets, "
                    f"across {spread} providers or topologies: its own network is suspect, "
                    f"so it is left out of {region}'s quorums"
                ),
                for_=inp.cfg.for_,
                keep_firing_for=inp.cfg.keep_firing_for,
            )
        )
    return out, sick


def _quorum(cfg: AlertsConfig, region: str, target: str, js: list[_Judged]) -> list[Condition]:
    """Regional latency and errors on one target, from its healthy probes."""
    if not js:
        return []
    st, topology = js[0].settings, js[0].series.topology
    out = []
    for rule in ("latency", "errors"):
        verdicts: list[tuple[str, Verdict]] = []
        for j in js:
            v = j.latency if rule == "latency" else j.errors
            if v is not None:
                verdicts.append((j.series.probe, v))
        if not verdicts:
            continue
        bad = sorted(((p, v) for p, v in verdicts if v.degraded), key=lambda pv: pv[0])
        if bad and len(bad) >= min(st.quorum, len(verdicts)):
            out.append(_regional(rule, region, target, topology, bad, len(verdicts), st))
        elif bad and cfg.probe_warnings:
            out += [
                _regional(rule, region, target, topology, [pv], len(verdicts), st, probe=pv[0])
                for pv in bad
            ]
    return out


def _catchment(inp: Inputs, region: str, target: str, js: list[_Judged]) -> list[Condition]:
    """The region's probes answered by another site than their usual one."""
    if not js or js[0].series.kind != "dns" or js[0].series.topology != "anycast":
        return []
    st = js[0].settings
    if not st.rules.catchment.enabled:
        return []
    seen: list[tuple[str, str, str]] = []  # probe, usual site, site now
    for j in js:
        now = next(
            (x.site for x in reversed(j.series.samples) if x.site and x.value is not None), None
        )
        usual = inp.usual_site(j.series.probe, target)
        if now and usual:
            seen.append((j.series.probe, usual, now))
    moved = [m for m in seen if m[1] != m[2]]
    if not moved or len(moved) < min(st.quorum, len(seen)):
        return []
    src = Counter(m[1] for m in moved).most_common(1)[0][0]
    dst = Counter(m[2] for m in moved).most_common(1)[0][0]
    flapping = [f"{m[0]} ({n})" for m in moved if (n := inp.flaps(m[0], target)) >= 2]
    summary = f"{region}: {len(moved)} of {len(seen)} probes moved from {src} to {dst} on {target}"
    if flapping:
        summary += f"; flapping (site changes in the last hour): {', '.join(flapping)}"
    return [
        Condition(
            labels=labels(
                alertname="catchment",
                severity="warning",
                region=region,
                target=target,
                topology="anycast",
            ),
            value=float(len(moved)),
            unit="probes",
            baseline=None,
            probes=tuple(m[0] for m in moved),
            of=len(seen),
            summary=summary,
            for_=st.for_,
            keep_firing_for=st.keep_firing_for,
            extra=(("from_site", src), ("to_site", dst)),
        )
    ]


def _propagation(inp: Inputs, judged: list[_Judged]) -> list[Condition]:
    """Sites serving an older serial than the newest for longer than allowed."""
    at = inp.snap.at
    by_target: dict[str, list[_Judged]] = defaultdict(list)
    for j in judged:
        by_target[j.series.target].append(j)
    out = []
    for target, (newest, sites) in sorted(inp.serials.items()):
        js = by_target.get(target, [])
        since = inp.newest_since.get(target)
        if not js or since is None or not js[0].settings.rules.propagation.enabled:
            continue
        st = js[0].settings
        lag_s = (at - since) / NS
        for site, (serial, _) in sorted(sites.items()):
            if serial == newest or lag_s <= st.rules.propagation.max_serial_lag_s:
                continue
            seers = sorted(
                {j.series.probe for j in js if any(x.site == site for x in j.series.samples)}
            )
            out.append(
                Condition(
                    labels=labels(
                        alertname="propagation",
                        severity="warning",
                        target=target,
                        topology="anycast",
                        site=site,
                    ),
                    value=lag_s,
                    unit="s",
                    baseline=st.rules.propagation.max_serial_lag_s,
                    probes=tuple(seers),
                    of=len(seers),
                    summary=(
                        f"{target}: site {site} serves serial {serial}; {newest} is the newest, "
                        f"seen at another site {lag_s:.0f} s ago"
                    ),
                    for_=st.for_,
                    keep_firing_for=st.keep_firing_for,
                    extra=(("serial", str(serial)), ("newest_serial", str(newest))),
                )
            )
    return out


def _silence(inp: Inputs) -> list[Condition]:
    """Probes with no heartbeat for ``missed`` x ``heartbeat_s``."""
    rule = inp.cfg.rules.silence
    if not rule.enabled:
        return []
    at = inp.snap.at
    limit_s = rule.missed * rule.heartbeat_s
    known = dict(inp.snap.heartbeats)
    for region, probe in inp.firing.probes("silence"):
        known.setdefault(probe, (region, 0))  # silent for over a day, still firing
    out = []
    for probe, (region, last) in sorted(known.items()):
        if inp.registered is not None and probe not in inp.registered:
            continue
        age_s = (at - last) / NS if last else 86400.0
        if age_s <= limit_s:
            continue
        out.append(
            Condition(
                labels=labels(alertname="silence", severity="warning", region=region, probe=probe),
                value=age_s,
                unit="s",
                baseline=limit_s,
                probes=(probe,),
                of=1,
                summary=(
                    f"probe {probe} ({region}) is silent: no heartbeat for "
                    + (f"{age_s:.0f} s" if last else "over a day")
                    + f" (expected every {rule.heartbeat_s:g} s)"
                ),
                for_=inp.cfg.for_,
                keep_firing_for=inp.cfg.keep_firing_for,
            )
        )
    return out


def _regional(
    rule: str,
    region: str,
    target: str,
    topology: str,
    bad: list[tuple[str, Verdict]],
    of: int,
    st: TargetSettings,
    probe: str = "",
) -> Condition:
    probes = tuple(p for p, _ in bad)
    severity = "critical" if len(bad) >= 2 else "warning"
    who = f"{', '.join(probes)} ({len(bad)} of {of} probes)"
    if rule == "latency":
        value = _median(v.value for _, v in bad)
        base = _median(v.baseline for _, v in bad if v.baseline is not None)
        summary = (
            f"{region}: {target} latency {value:.1f} ms, {value / base:.1f}x its baseline "
            f"{base:.1f} ms, seen by {who}"
        )
        unit, baseline = "ms", base
    else:
        failures = sum(v.failures for _, v in bad)
        samples = sum(v.samples for _, v in bad)
        value = failures / samples
        summary = (
            f"{region}: {target} failing, {failures} of {samples} queries ({value:.0%}), "
            f"seen by {who}"
        )
        unit, baseline = "ratio", st.rules.errors.max_error_ratio
    return Condition(
        labels=labels(
            alertname=rule,
            severity=severity,
            region=region,
            target=target,
            topology=topology,
            probe=probe,
        ),
        value=value,
        unit=unit,
        baseline=baseline,
        probes=probes,
        of=of,
        summary=summary,
        for_=st.for_,
        keep_firing_for=st.keep_firing_for,
    )


__all__ = [
    "Condition",
    "Firing",
    "Inputs",
    "Labels",
    "annotate",
    "assess",
    "judge_errors",
    "judge_latency",
    "labels",
]
