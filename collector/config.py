"""The collector's configuration: typed, validated when loaded.

Every key is also a ``POPWATCH_<KEY>`` variable (the variable wins); every key, its
default and its meaning are in ``collector/example.yaml`` (``popwatch-collector
example`` prints it). Keys with units say them: ``_s`` seconds, ``_ms`` milliseconds,
``_bytes`` bytes.

A bad setting raises :class:`probe.configfile.ConfigError` whose message is one line naming
where the value came from and what is wrong: ``FILE: KEY: fault`` for a key of the file,
``POPWATCH_KEY: fault`` for a variable. An unknown key is an error, with the nearest
known key as a hint. A ``POPWATCH_*`` variable that is not a collector setting is an
error only when it is a near miss of one (``POPWATCH_INFLUXDB_ULR``); others are left
alone, since the probe's variables (``POPWATCH_TOKEN``, ...) may share the environment.
"""

from __future__ import annotations

import logging
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from collector.alerts.config import VARIABLES as ALERT_VARIABLES
from collector.alerts.config import AlertsConfig, load_alerts
from collector.ingest.limits import Limits
from probe.configfile import (
    ConfigError,
    closest,
    did_you_mean,
    explain,
    parse_hostport,
    read_yaml,
    url_fault,
)

log = logging.getLogger("popwatch.collector")


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The collector's settings. Every key has a default; see ``collector/example.yaml``."""

    listen: str = "0.0.0.0:8080"  # host:port of the API
    admin_listen: str = "127.0.0.1:8081"  # host:port of /metrics, /readyz, the status page
    # names the admin listener answers to besides IP addresses, one-label names,
    # localhost and Kubernetes service names (a Host check against DNS rebinding)
    admin_hosts: list[str] = msgspec.field(default_factory=list)
    data_dir: str = "/var/lib/popwatch"  # the registry, the batch-id table and the spool
    targets: str | None = None  # the targets file served on /api/v1/config
    influxdb_url: str = "http://127.0.0.1:8086"
    # auto: the version /ping reports picks v1 (InfluxDB < 1.8) or v2 (1.8+, 2.x, 3.x)
    influxdb_api: Literal["auto", "v1", "v2"] = "auto"
    influxdb_token: str | None = None
    influxdb_org: str | None = None
    influxdb_bucket: str = "popwatch"  # the database with the v1 API
    # one write: request start (connecting included) -> InfluxDB's answer
    influxdb_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # InfluxDB's own limits (its max-values-per-tag, max-series-per-database): /readyz
    # warns when InfluxDB's estimates pass 80 % of them
    influxdb_max_values_per_tag: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    influxdb_max_series_per_database: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    # a write InfluxDB has not confirmed by then is made durable in the spool instead
    spool_after_ms: Annotated[float, msgspec.Meta(gt=0)] = 25.0
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_000_000_000
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # the public API's bounds: a section of its own (collector/ingest/limits.py)
    limits: Limits = msgspec.field(default_factory=Limits)
    # the alert engine: its own keys and variables (collector/alerts/config.py)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)

    def __post_init__(self) -> None:
        # each fault starts with its key: load_config names the key's source from it
        try:
            parse_hostport(self.listen, 8080)
        except ValueError as exc:
            raise ValueError(f"listen: {exc} (expected host:port, e.g. 0.0.0.0:8080)") from None
        try:
            parse_hostport(self.admin_listen, 8081)
        except ValueError as exc:
            raise ValueError(
                f"admin_listen: {exc} (expected host:port, e.g. 127.0.0.1:8081)"
            ) from None
        if why := url_fault(self.influxdb_url):
            raise ValueError(f"influxdb_url: {why}")
        if self.tls_cert and not self.tls_key:
            raise ValueError("tls_key: required with tls_cert (the certificate's private key)")
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_cert: required with tls_key (the certificate chain)")


#: a short meaning per key, for ``run --help`` (collector/example.yaml says more)
MEANING: Final = {
    "listen": "host:port of the public API: probe ingest, targets, /healthz",
    "admin_listen": "host:port of /metrics, /readyz and the status page (keep it private)",
    "admin_hosts": "more names the admin listener answers to (comma-separated as a variable)",
    "data_dir": "the probe registry, the batch ids already written, and the spool",
    "targets": "a targets file, served to probes on /api/v1/config (unset: 404)",
    "influxdb_url": "InfluxDB's base URL, http:// or https://",
    "influxdb_api": "auto (ask /ping), v2 (/api/v2/write: 1.8+, 2.x, 3.x), v1 (/write: <= 1.7)",
    "influxdb_token": "API token (2.x, 3.x), or user:password on 1.8",
    "influxdb_org": "the organisation (2.x, 3.x)",
    "influxdb_bucket": "the bucket; the database with v1, database/retention on 1.8",
    "influxdb_timeout_s": "seconds for one write, connecting included",
    "influxdb_max_values_per_tag": "InfluxDB's max-values-per-tag: /readyz warns past 80 %",
    "influxdb_max_series_per_database": "InfluxDB's max-series-per-database: warned past 80 %",
    "spool_after_ms": "a write unconfirmed after this long goes to the spool",
    "spool_max_bytes": "the spool's bound: past it probes get 503 and keep their data",
    "tls_cert": "serve HTTPS with this certificate chain (PEM), with tls_key",
    "tls_key": "the private key of tls_cert (PEM)",
    "log_level": "debug, info, warning or error",
    "limits": "what one client may send and hold (a section: see `popwatch-collector example`)",
    "alerts": "the alert engine (a section of its own: see `popwatch-collector example`)",
}

#: the probe's variables (docs/design.md): never taken for a misspelt collector setting
PROBE_VARIABLES: Final = frozenset(
    {
        "POPWATCH_PROBE_ID",
        "POPWATCH_COLLECTOR_URL",
        "POPWATCH_TOKEN",
        "POPWATCH_TOKEN_FILE",
        "POPWATCH_COLLECTOR_CA",
        "POPWATCH_INSECURE",
    }
)


def variable(key: str) -> str:
    """The environment variable of a key: ``influxdb_url`` is ``POPWATCH_INFLUXDB_URL``."""
    return f"POPWATCH_{key.upper()}"


_FIELDS: Final = CollectorConfig.__struct_fields__
#: keys that are sections: their keys are set in the section, or by POPWATCH_<SECTION>_<KEY>
SECTIONS: Final = ("alerts", "limits")
LIMIT_KEYS: Final = Limits.__struct_fields__
#: keys that were top-level before the limits: section; the old names still work
MOVED: Final = ("max_body_bytes", "max_decoded_bytes", "records_per_second", "burst_records")


def limit_variable(key: str) -> str:
    """The variable of a ``limits:`` key: ``max_records`` is ``POPWATCH_LIMITS_MAX_RECORDS``."""
    return f"POPWATCH_LIMITS_{key.upper()}"


_HINTS: Final = typing.get_type_hints(CollectorConfig, include_extras=True)
_LIMIT_HINTS: Final = typing.get_type_hints(Limits)


def _choices(key: str) -> tuple[str, ...]:
    """The values a Literal key takes (empty for other keys)."""
    hint = _HINTS.get(key)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _unknown(data: dict[str, Any], file: str, env: dict[str, str]) -> None:
    """An unknown key in the file, or a near miss of a variable, is one line with a hint."""
    for key in data:
        if key not in _FIELDS and key not in MOVED:
            raise ConfigError(f"{file}: {key}: unknown key{did_you_mean(str(key), _FIELDS)}")
    for var in sorted(env):
        if not var.startswith("POPWATCH_") or var in PROBE_VARIABLES:
            continue
        if var in ALERT_VARIABLES.values():
            continue
        key = var.removeprefix("POPWATCH_").lower()
        if key in _FIELDS or key in MOVED:
            continue
        if key.startswith("limits_"):
            sub = key.removeprefix("limits_")
            if sub not in LIMIT_KEYS:
                near = closest(sub, LIMIT_KEYS)
                hint = f" (did you mean {limit_variable(near)}?)" if near else ""
                raise ConfigError(f"{var}: unknown variable{hint}")
            continue
        # compared without the shared prefix, which would make every pair look alike
        near = closest(key, _FIELDS, cutoff=0.8)
        if near:
            raise ConfigError(f"{var}: unknown variable (did you mean {variable(near)}?)")


def _limits(data: dict[str, Any], file: str, env: dict[str, str]) -> dict[str, str]:
    """Put the ``limits:`` keys given by variables (and by the old top-level names) into
    ``data["limits"]``; the keys a variable set, and the variable."""
    section = data.get("limits", {})
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: limits: expected a mapping of keys, got {section!r}")
    section = dict(section)
    from_env: dict[str, str] = {}
    for key in MOVED:  # the old names: a file key, or POPWATCH_<KEY>
        if key in data:
            log.warning("%s: %s is now limits.%s; the old name still works", file, key, key)
            section.setdefault(key, data.pop(key))
        if variable(key) in env:
            section[key] = env[variable(key)]
            from_env[key] = variable(key)
    for key in LIMIT_KEYS:
        if limit_variable(key) in env:
            value: Any = env[limit_variable(key)]
            if typing.get_origin(_LIMIT_HINTS.get(key)) is list:  # a list: comma-separated
                value = [v.strip() for v in value.split(",") if v.strip()]
            section[key] = value
            from_env[key] = limit_variable(key)
    data["limits"] = section
    return from_env


def load_config(
    path: str | os.PathLike[str] | None, env: dict[str, str] | None = None
) -> CollectorConfig:
    """Load the collector config file (or defaults) and apply ``POPWATCH_<KEY>`` variables.

    A variable and a file key are the same setting; the variable wins. An empty variable
    unsets a key whose default is unset (``POPWATCH_TARGETS=``).
    """
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    file = "(config)"
    if path is not None:
        file = str(path)
        data = read_yaml(Path(path))
    _unknown(data, file, env)
    from_env: set[str] = set()
    limits = _limits(data, file, env)
    defaults = CollectorConfig.__struct_defaults__
    for key, default in zip(_FIELDS, defaults, strict=True):
        if key in SECTIONS:
            continue
        var = variable(key)
        if var in env:
            data[key] = env[var] if env[var] or default is not None else None
            if typing.get_origin(_HINTS.get(key)) is list:  # a list: comma-separated
                data[key] = [v.strip() for v in env[var].split(",") if v.strip()]
            from_env.add(key)
    for key in _FIELDS:
        if _choices(key) and isinstance(data.get(key), str):
            data[key] = data[key].strip().lower()  # INFO, V1: the case does not matter
    try:
        alerts = load_alerts(data.pop("alerts", None), file, env)  # its keys, its variables
        cfg = msgspec.convert(data, CollectorConfig, strict=False)
        cfg.alerts = alerts
        return cfg
    except msgspec.ValidationError as exc:
        fault = explain(CollectorConfig, data, exc)
        why, bad = fault.text.replace("\n", " "), fault.top
        sub = fault.path.removeprefix("limits.")
        if bad == "limits" and sub in limits:
            given = data["limits"].get(sub)
            if ", got " in why and given is not None:
                why = f"{why.partition(', got ')[0]}, got {given!r}"
            raise ConfigError(f"{limits[sub]}: {why}") from None
        if bad and (bad in from_env or path is None):
            given = data.get(bad)
            if ", got " in why and given is not None:
                why = f"{why.partition(', got ')[0]}, got {given!r}"
            raise ConfigError(f"{variable(bad)}: {why}") from None
        raise ConfigError(f"{file}: {fault.path or '(top level)'}: {why}") from None


__all__ = [
    "MEANING",
    "CollectorConfig",
    "ConfigError",
    "did_you_mean",
    "load_config",
    "url_fault",
    "variable",
]
