"""The probe's own configuration: typed, validated when loaded, never at probe time.

The targets schema lives in :mod:`probe.targets`; its names are re-exported here. A bad
file raises :class:`ConfigError` whose message is one line: ``FILE: KEY.PATH: fault``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from probe.configfile import (
    ConfigError,
    ca_fault,
    convert,
    is_ip,
    parse_hostport,
    read_yaml,
)
from probe.targets import (
    QTYPES,
    AnyTarget,
    DnsTarget,
    HttpTarget,
    Name,
    Query,
    Target,
    TargetsFile,
    check_unique,
    default_kind,
    load_targets,
)


class ProbeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The probe's own settings. Every key has a default; see ``probe/example.yaml``."""

    id: Name = msgspec.field(default_factory=lambda: _default_id())
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 512
    output: str = "-"  # JSON lines: a file path, or "-" for standard output
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    resolve_interval_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    resolver: str | None = None  # "IP[:PORT]" for host-name lookups; the system's if unset
    metrics_listen: str | None = None  # "host:port" for /metrics; off if unset
    targets_file: str | None = None  # a targets file; its list is added to ``targets``
    collector_url: str | None = None  # ship records there instead of writing ``output``
    token: str | None = None  # this probe's token (popwatch-collector probes add)
    token_file: str | None = None  # or a file holding it (a Docker secret, say)
    collector_ca: str | None = None  # a CA (PEM) to pin the collector's certificate to
    insecure: bool = False  # allow plain http:// to a collector that is not on loopback
    data_dir: str = "/var/lib/popwatch"  # the spool lives in DATA_DIR/spool
    batch_records: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    batch_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 2.0
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1_000_000)] = 200_000_000
    heartbeat_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    config_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0  # target pulls
    asks: bool = True  # long-poll the collector for asks (on-demand measurements)
    ask_max_qps: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 20.0  # our own cap
    command_wait_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 25.0  # one long-poll
    targets: list[AnyTarget] = msgspec.field(default_factory=list)


#: the variables whose names are not simply POPWATCH_<KEY>
ENV_NAMES: Final = {"id": "POPWATCH_PROBE_ID", "targets_file": "POPWATCH_TARGETS"}


def _check_shipping(cfg: ProbeConfig, where: Callable[[str], str]) -> None:
    """Shipping settings that work together; ``where(key)`` names a key's origin."""
    if cfg.token_file and not cfg.token:
        try:
            cfg.token = Path(cfg.token_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{where('token_file')}: {exc.strerror}: {cfg.token_file}") from None
        if cfg.token is None:
            raise ConfigError(f"{where('token_file')}: {cfg.token_file} is empty")
    if cfg.collector_url and not cfg.token:
        raise ConfigError(
            f"{where('token')}: required with collector_url (set POPWATCH_TOKEN or "
            "POPWATCH_TOKEN_FILE)"
        )
    if cfg.collector_url:
        _check_collector_url(cfg.collector_url, where("collector_url"))
        _check_transport(cfg, where)


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_transport(cfg: ProbeConfig, where: Callable[[str], str]) -> None:
    """A token goes over TLS, or over plain HTTP only to loopback (or where the operator
    said ``insecure``); a pinned CA makes sense only with https."""
    assert cfg.collector_url
    parts = urllib.parse.urlsplit(cfg.collector_url)
    if parts.scheme == "http" and cfg.collector_ca:
        raise ConfigError(
            f"{where('collector_ca')}: set, but collector_url {cfg.collector_url!r} is plain "
            "http: use https:// to the collector"
        )
    if parts.scheme == "http" and not cfg.insecure and not _is_loopback(parts.hostname or ""):
        raise ConfigError(
            f"{where('collector_url')}: {cfg.collector_url!r} would send the token in clear "
            "text to a host that is not loopback: use https:// (POPWATCH_COLLECTOR_CA pins "
            "a private CA), or set POPWATCH_INSECURE=1 on a network you trust"
        )
    collector_tls(cfg, where)


def collector_tls(
    cfg: ProbeConfig, where: Callable[[str], str] = lambda key: key
) -> ssl.SSLContext | None:
    """The TLS context for the collector: only ``collector_ca`` is trusted when it is set
    (the certificate is pinned to that CA, and its name is checked); None for the system's
    trust store."""
    if not cfg.collector_ca:
        return None
    try:
        return ssl.create_default_context(cafile=cfg.collector_ca)
    except ssl.SSLError as exc:  # an OSError too: first
        raise ConfigError(
            f"{where('collector_ca')}: {cfg.collector_ca} is not a PEM CA certificate "
            f"({exc.reason or exc})"
        ) from None
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(f"{where('collector_ca')}: {why}: {cfg.collector_ca}") from None


def _check_collector_url(url: str, where: str) -> None:
    """The collector's base URL: a scheme and a host, and no API path after them."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: {url!r} is not an http(s) URL with a host "
            "(e.g. https://collector.example.net:8080)"
        )
    if parts.path.rstrip("/") or parts.query:
        base = f"{parts.scheme}://{parts.netloc}"
        raise ConfigError(
            f"{where}: {url!r} has a path; give the collector's base URL "
            f"({base}): the probe adds /api/v1/measurements and /api/v1/config itself"
        )


def _default_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:63]
    return host if host and host[0].isalnum() else "probe"


def load_config(
    path: str | os.PathLike[str] | None, env: dict[str, str] | None = None
) -> ProbeConfig:
    """Load the probe config file (or defaults), apply ``POPWATCH_*`` variables, load targets.

    A variable and a file key are the same setting; the variable wins.
    """
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    source = "(environment)"
    if path is not None:
        source = str(path)
        data = read_yaml(Path(path))
    from_env: dict[str, str] = {}  # key -> the variable that set it
    for key in ProbeConfig.__struct_fields__:
        var = ENV_NAMES.get(key, f"POPWATCH_{key.upper()}")
        if key != "targets" and var in env:
            data[key] = env[var].lower() if key == "log_level" else env[var]
            from_env[key] = var
    default_kind(data)
    cfg: ProbeConfig = convert(data, ProbeConfig, source, from_env)
    check_unique(source, cfg.targets)
    _check_shipping(cfg, lambda key: from_env.get(key) or f"{source}: {key}")
    if cfg.targets_file:
        tf = Path(cfg.targets_file)
        if path is not None and not tf.is_absolute():
            tf = Path(path).parent / tf
        extra = load_targets(tf)
        cfg.targets = [*cfg.targets, *extra]
        check_unique(f"{source} + {tf}", cfg.targets)
    check_ca_files(source, cfg.targets)
    return cfg


def check_ca_files(source: str, targets: list[AnyTarget]) -> None:
    """Every target's ``tls_ca`` can be read and holds a CA certificate: a file that is
    missing, unreadable or not PEM is one line when the config loads, not a traceback at
    every fetch."""
    for i, t in enumerate(targets):
        ca = getattr(t, "tls_ca", None)
        if ca and (why := ca_fault(ca)):
            raise ConfigError(f"{source}: targets[{i}].tls_ca: {why} (target {t.name})")


__all__ = [
    "QTYPES",
    "AnyTarget",
    "ConfigError",
    "DnsTarget",
    "HttpTarget",
    "ProbeConfig",
    "Query",
    "Target",
    "TargetsFile",
    "check_unique",
    "collector_tls",
    "default_kind",
    "is_ip",
    "load_config",
    "load_targets",
    "parse_hostport",
    "read_yaml",
]
