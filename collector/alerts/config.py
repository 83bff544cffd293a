"""The ``alerts:`` section of the collector's config: typed, validated when loaded.

Every key has a default (``collector/example.yaml`` lists them all). Rules are set once
for every target (``alerts.rules``, ``alerts.quorum``, ``alerts.for_s``,
``alerts.keep_firing_for_s``), and a ``group`` of targets (matched by name, topology or
provider) may override any of them for its targets.

A bad section raises :class:`probe.configfile.ConfigError` with one line naming the key
path and the fault, ``FILE: alerts.rules.latency.factor: expected float > 1.0``, or the
variable it came from, ``POPWATCH_ALERTMANAGER_URL: ...``. Top-level keys of the
section are also variables: ``POPWATCH_ALERTS_<KEY>`` (``POPWATCH_ALERTS_ENABLED=1``),
except ``alertmanager_url``, which is ``POPWATCH_ALERTMANAGER_URL``.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from collector.alerts.rules import RULES, TargetSettings
from collector.alerts.rules.base import AnyRule
from probe.configfile import ConfigError, explain, keys_of, url_fault

Count = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Duration = Annotated[float, msgspec.Meta(ge=0, le=86400)]
#: keys that became durations: their old name, and the new one's
RENAMED: Final = {"for": "for_s", "keep_firing_for": "keep_firing_for_s"}


def _section(name: str, rules: tuple[AnyRule, ...]) -> type[msgspec.Struct]:
    """A struct with one key per rule, each defaulting to that rule's defaults."""
    return msgspec.defstruct(
        name,
        [(r.name, r.settings, msgspec.field(default_factory=r.settings)) for r in rules],
        forbid_unknown_fields=True,
        kw_only=True,
        frozen=True,
    )


#: ``alerts.rules``: every rule's settings (one key per rule of ``RULES``)
Rules: Final = _section("Rules", RULES)
#: the rules a group of targets may set (the others are about probes, not targets)
TARGET_RULES: Final = tuple(r.name for r in RULES if r.per_target)
#: a group's ``rules``: the global ones, with the group's keys over them
TargetRules: Final = _section("TargetRules", tuple(r for r in RULES if r.per_target))


class Group(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Targets that share settings: those matching every matcher given (``targets``:
    name globs, ``topologies``, ``providers``). The first matching group wins."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    targets: list[str] = msgspec.field(default_factory=list)  # fnmatch globs of names
    topologies: list[Literal["unicast", "anycast", "resolver"]] = msgspec.field(
        default_factory=list
    )
    providers: list[str] = msgspec.field(default_factory=list)
    quorum: Count | None = None
    for_s: Duration | None = None
    keep_firing_for_s: Duration | None = None
    rules: TargetRules = msgspec.field(default_factory=TargetRules)  # type: ignore[valid-type]

    def __post_init__(self) -> None:
        if not (self.targets or self.topologies or self.providers):
            raise ValueError("targets: a group needs targets, topologies or providers to match")

    def matches(self, target: str, topology: str, provider: str) -> bool:
        return (
            (not self.targets or any(fnmatch.fnmatchcase(target, g) for g in self.targets))
            and (not self.topologies or topology in self.topologies)
            and (not self.providers or provider in self.providers)
        )


class Webhook(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A webhook that gets every state change: ``json`` (Alertmanager's webhook body) or
    ``slack`` (an incoming-webhook ``text``; Mattermost and Rocket.Chat take it too)."""

    url: str
    format: Literal["json", "slack"] = "json"

    def __post_init__(self) -> None:
        if why := url_fault(self.url):
            raise ValueError(f"url: {why}")


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The alert engine's settings; see ``collector/example.yaml``."""

    enabled: bool = False  # evaluate in this collector (one evaluator or several: a lease)
    evaluate_every_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    alertmanager_url: str | None = None  # base URL; alerts go to /api/v2/alerts
    resend_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0  # to Alertmanager
    webhooks: list[Webhook] = msgspec.field(default_factory=list)
    dashboard_url: str | None = None  # a Grafana dashboard; alerts link to it
    quorum: Count = 2  # healthy probes of a region that must agree
    # seconds a condition must hold before its alert fires, and must be gone before a
    # firing alert resolves: durations, as in Prometheus (an evaluation at a time of the
    # evaluate_every_s grid, so a changed grid changes nothing of how long they wait)
    for_s: Duration = 30.0
    keep_firing_for_s: Duration = 60.0
    probe_warnings: bool = False  # a probe degraded alone on a target: a warning
    rules: Rules = msgspec.field(default_factory=Rules)  # type: ignore[valid-type]
    groups: list[Group] = msgspec.field(default_factory=list)
    # a prefix -> ASN file of the operator's (pyasn's format): the AS of each hop in a
    # path difference's words; None: addresses only (nothing is looked up elsewhere)
    asn_file: str | None = None

    def __post_init__(self) -> None:
        for key in ("alertmanager_url", "dashboard_url"):
            url = getattr(self, key)
            if url is not None and (why := url_fault(url)):
                raise ValueError(f"{key}: {why}")
        names = [g.name for g in self.groups]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"groups: group name {name!r} is used twice")

    @property
    def window_s(self) -> float:
        """The longest window any target's rules look at."""
        sections: list[msgspec.Struct] = [self.rules, *(g.rules for g in self.groups)]
        return max(
            getattr(rule.of(s), "window_s", 0.0)
            for s in sections
            for rule in RULES
            if hasattr(s, rule.name)
        )


def settings_for(cfg: AlertsConfig, target: str, topology: str, provider: str) -> TargetSettings:
    """What applies to one target: the first group that matches it, else the globals."""
    for g in cfg.groups:
        if g.matches(target, topology, provider):
            return TargetSettings(
                group=g.name,
                quorum=g.quorum or cfg.quorum,
                for_s=cfg.for_s if g.for_s is None else g.for_s,
                keep_firing_for_s=(
                    cfg.keep_firing_for_s if g.keep_firing_for_s is None else g.keep_firing_for_s
                ),
                rules=g.rules,
            )
    return TargetSettings(
        group=None,
        quorum=cfg.quorum,
        for_s=cfg.for_s,
        keep_firing_for_s=cfg.keep_firing_for_s,
        rules=TargetRules(**{name: getattr(cfg.rules, name) for name in TARGET_RULES}),
    )


#: every key of the section, at any depth: what an unknown key is compared with
ALERT_KEYS: Final = keys_of(AlertsConfig, Rules, Group, Webhook, *(r.settings for r in RULES))

#: the section's top-level keys that are variables, and their variable
VARIABLES: Final = {
    key: "POPWATCH_ALERTMANAGER_URL"
    if key == "alertmanager_url"
    else f"POPWATCH_ALERTS_{key.upper()}"
    for key in (
        "enabled",
        "evaluate_every_s",
        "alertmanager_url",
        "resend_s",
        "dashboard_url",
        "quorum",
        "for_s",
        "keep_firing_for_s",
        "probe_warnings",
    )
}

_BOOLS: Final = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS.update({"0": False, "false": False, "no": False, "off": False, "": False})


#: keys of a rule that are gone, and what replaced them
REMOVED: Final = {
    ("errors", "hysteresis"): "the ratio is judged with its confidence bounds instead: "
    "confidence (to fire) and resolve_confidence (to resolve)",
}


def _renamed(section: dict[str, Any], file: str, path: str) -> None:
    """A key that became a duration is named with its new name, not taken as a count;
    a key that is gone says what replaced it."""
    for old, new in RENAMED.items():
        if old in section:
            raise ConfigError(
                f"{file}: {path}.{old}: renamed {new}: a duration in seconds (it was a count "
                f"of evaluations: {old}: 2 at evaluate_every_s 30 is {new}: 30)"
            )
    rules = section.get("rules")
    for (rule, key), instead in REMOVED.items():
        if isinstance(rules, dict) and isinstance(rules.get(rule), dict) and key in rules[rule]:
            raise ConfigError(f"{file}: {path}.rules.{rule}.{key}: removed: {instead}")


def _deep_merge(base: Any, over: Any) -> Any:
    """``over``'s keys over ``base``'s, mappings merged key by key."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else v
        return out
    return over


def _explain(
    err: msgspec.ValidationError,
    section: dict[str, Any],
    file: str,
    env_keys: Mapping[str, str],
) -> str:
    """One line, ``FILE: alerts.key.path: fault`` (or ``VARIABLE: fault``)."""
    fault = explain(_Section, {"alerts": section}, err)
    msg, path = fault.text.replace("\n", " "), fault.path
    in_group = re.search(r"groups\[\d+\]\.rules$", path.rpartition(".")[0])
    if fault.unknown is not None and in_group and fault.unknown in ALERT_KEYS:
        msg = f"unknown key here: a group sets only {', '.join(TARGET_RULES)}"
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "alerts" and parts[1] in env_keys:
        given = section.get(parts[1])
        if ", got " in msg and given is not None:
            msg = f"{msg.partition(', got ')[0]}, got {given!r}"
        return f"{env_keys[parts[1]]}: {msg}"
    return f"{file}: {path}: {msg}"


class _Section(msgspec.Struct, forbid_unknown_fields=True):
    alerts: AlertsConfig


def load_alerts(
    data: Any, file: str = "(config)", env: Mapping[str, str] | None = None
) -> AlertsConfig:
    """The ``alerts:`` section (``data``, as read from the file; None for absent) with
    its ``POPWATCH_ALERTS_*`` variables over it. Raises ``ConfigError`` (one line)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: alerts: expected a mapping of keys, got {data!r}")
    data = copy.deepcopy(data)
    _renamed(data, file, "alerts")
    for i, g in enumerate(data.get("groups") or []):
        if isinstance(g, dict):
            _renamed(g, file, f"alerts.groups[{i}]")
    for old, new in RENAMED.items():
        var = f"POPWATCH_ALERTS_{old.upper()}"
        if env is not None and var in env:
            raise ConfigError(
                f"{var}: renamed POPWATCH_ALERTS_{new.upper()}: a duration in seconds "
                "(it was a count of evaluations)"
            )
    from_env: dict[str, str] = {}
    for key, var in VARIABLES.items():
        if env is not None and var in env:
            value = env[var]
            word = value.strip().lower()
            if value == "" and key in ("alertmanager_url", "dashboard_url"):
                data[key] = None
            elif key in ("enabled", "probe_warnings") and word in _BOOLS:
                data[key] = _BOOLS[word]
            else:
                data[key] = value
            from_env[key] = var
    try:
        # the global part alone first, so its faults are named at their own path
        alone = {k: v for k, v in data.items() if k != "groups"}
        msgspec.convert({"alerts": alone}, _Section, strict=False)
        groups = data.get("groups")
        if isinstance(groups, list):
            rules = data.get("rules") if isinstance(data.get("rules"), dict) else {}
            merged = []
            for g in groups:
                if isinstance(g, dict):
                    g = dict(g)
                    own = g.get("rules") if isinstance(g.get("rules"), dict) else {}
                    base = {k: v for k, v in rules.items() if k in TARGET_RULES}
                    if g.get("rules") is None or isinstance(g.get("rules"), dict):
                        g["rules"] = _deep_merge(base, own)
                merged.append(g)
            data = {**data, "groups": merged}
        return msgspec.convert({"alerts": data}, _Section, strict=False).alerts
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, data, file, from_env)) from None


__all__ = [
    "ALERT_KEYS",
    "TARGET_RULES",
    "VARIABLES",
    "AlertsConfig",
    "Group",
    "Rules",
    "TargetRules",
    "TargetSettings",
    "Webhook",
    "load_alerts",
    "settings_for",
]
