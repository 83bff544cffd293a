"""The alert rules: one module per rule behind the :class:`Rule` seam, and one table.

Each module exports ``RULE``, an instance of its :class:`Rule` subclass, with the
settings struct of its keys. :data:`RULES` is the one list of them: the config's
``alerts.rules`` section, its defaults, what a group of targets may override, the keys an
unknown key is compared with, and the metrics per rule all come from it, and tests hold
``collector/example.yaml`` and the README to it. :func:`assess` runs every rule over one
evaluation's :class:`Inputs` (pure: no I/O, no clock; the engine adds the waits).
"""

from __future__ import annotations

from typing import Final

from collector.alerts.rules import (
    catchment,
    errors,
    inflation,
    latency,
    probe_health,
    propagation,
    silence,
)
from collector.alerts.rules.base import (
    AnyRule,
    Condition,
    Firing,
    Inputs,
    Judged,
    Labels,
    Rule,
    RuleSettings,
    TargetSettings,
    Verdict,
    fmt,
    labels,
)

#: every rule, in the order of the config section and of an evaluation's steps
RULES: Final[tuple[AnyRule, ...]] = (
    latency.RULE,
    errors.RULE,
    probe_health.RULE,
    silence.RULE,
    catchment.RULE,
    propagation.RULE,
    inflation.RULE,
)
BY_ALERTNAME: Final[dict[str, AnyRule]] = {r.alertname: r for r in RULES}


def _judge(inp: Inputs) -> list[Judged]:
    """Each probe on each series it measured in the window, by every judging rule."""
    judged = []
    for s in inp.snap.series.values():
        st = inp.settings(s.target, s.topology, s.provider)
        j = Judged(s, st)
        for rule in RULES:
            if not rule.judges:
                continue
            settings = rule.of(st.rules if rule.per_target else inp.cfg.rules)
            if not settings.enabled:
                continue
            # this probe's own alert (a probe warning); a regional one holds as a region
            mine = inp.firing.has(rule.alertname, s.region, s.target, s.probe)
            verdict = rule.judge(s, settings, inp, mine)
            if verdict is not None:
                j.verdicts[rule.name] = verdict
        judged.append(j)
    return judged


def assess(inp: Inputs) -> list[Condition]:
    """Every condition of this window, rule by rule: those that hold, and for firing
    alerts that no longer do, a condition with ``holds`` false (their value now)."""
    judged = _judge(inp)
    out: list[Condition] = []
    excluded: set[str] = set()
    for rule in RULES:
        conditions, left_out = rule.exclude(inp, judged)
        out += conditions
        excluded |= left_out
    for rule in RULES:
        out += rule.assess(inp, judged, excluded)
    return out


def line_of(rule: str) -> str:
    """Whether ``rule``'s conditions compare with a ``baseline`` or a ``threshold``."""
    found = BY_ALERTNAME.get(rule)
    return found.line if found else "baseline"


def annotate(c: Condition) -> dict[str, str]:
    """The condition's value, its baseline or threshold, and its probes, as annotation
    text."""
    out = {
        "summary": c.summary,
        "value": fmt(c.value, c.unit),
        "probes": f"{', '.join(c.probes)} ({len(c.probes)} of {c.of})",
    }
    if c.baseline is not None:
        rule = BY_ALERTNAME.get(c.rule)
        key = rule.line if rule else "baseline"
        out[key] = f"{fmt(c.baseline, c.unit)} ({rule.baseline_is if rule else ''})"
    out.update(c.extra)
    return out


__all__ = [
    "BY_ALERTNAME",
    "RULES",
    "Condition",
    "Firing",
    "Inputs",
    "Labels",
    "Rule",
    "RuleSettings",
    "TargetSettings",
    "Verdict",
    "annotate",
    "assess",
    "labels",
    "line_of",
]
