"""The targets schema: what a probe measures, as a targets file or the collector serves it.

Part of the contract between probe and collector (with :mod:`probe.wire`): stdlib,
msgspec, PyYAML and :mod:`probe.dnswire` (dnspython's name parser for unusual names) only.
The collector validates the targets file it serves with this module; the probe validates
what it is served with it too.

A bad file raises :class:`probe.configfile.ConfigError` whose message is one line,
``FILE: KEY.PATH: what is wrong`` (:mod:`probe.configfile` explains the faults).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from probe import dnswire
from probe.configfile import ConfigError, convert, is_ip, parse_hostport, read_yaml

QTYPES: Final = ("A", "AAAA", "NS", "SOA", "TXT", "CNAME", "MX", "CAA", "HTTPS", "DNSKEY")
QType = Literal["A", "AAAA", "NS", "SOA", "TXT", "CNAME", "MX", "CAA", "HTTPS", "DNSKEY"]
TransportName = Literal["udp", "tcp", "tls", "https"]
Identify = Literal["nsid", "chaos", "none"]
PingMethod = Literal["icmp", "tcp"]
TraceMethod = Literal["udp", "icmp", "tcp"]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")]
# a trace's bounds: TTLs tried, queries at each, seconds per query
MaxHops = Annotated[int, msgspec.Meta(ge=1, le=64)]
QueriesPerHop = Annotated[int, msgspec.Meta(ge=1, le=16)]
HopTimeout = Annotated[float, msgspec.Meta(gt=0, le=10)]

_HOSTNAME_RE: Final = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$"
)


class Query(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    qname: str
    qtype: QType = "SOA"

    def __post_init__(self) -> None:
        try:
            name = dnswire.absolute_name(self.qname)
        except ValueError as exc:
            raise ValueError(f"qname {self.qname!r} is not a domain name: {exc}") from None
        # store the absolute form, so records say "example.com." whatever was written
        msgspec.structs.force_setattr(self, "qname", name)


#: the cities a site may name instead of its coordinates (``city: ams``): the IATA code
#: or the name, (latitude, longitude) in degrees
CITIES: Final[dict[str, tuple[str, float, float]]] = {
    "ams": ("Amsterdam", 52.37, 4.90),
    "arn": ("Stockholm", 59.33, 18.07),
    "atl": ("Atlanta", 33.75, -84.39),
    "bom": ("Mumbai", 19.08, 72.88),
    "cdg": ("Paris", 48.86, 2.35),
    "dfw": ("Dallas", 32.78, -96.80),
    "dxb": ("Dubai", 25.20, 55.27),
    "eze": ("Buenos Aires", -34.60, -58.38),
    "fra": ("Frankfurt", 50.11, 8.68),
    "gru": ("Sao Paulo", -23.55, -46.63),
    "hkg": ("Hong Kong", 22.32, 114.17),
    "iad": ("Ashburn", 39.04, -77.49),
    "icn": ("Seoul", 37.57, 126.98),
    "jnb": ("Johannesburg", -26.20, 28.05),
    "lax": ("Los Angeles", 34.05, -118.24),
    "lhr": ("London", 51.51, -0.13),
    "mad": ("Madrid", 40.42, -3.70),
    "mia": ("Miami", 25.76, -80.19),
    "mex": ("Mexico City", 19.43, -99.13),
    "nrt": ("Tokyo", 35.68, 139.69),
    "ord": ("Chicago", 41.88, -87.63),
    "scl": ("Santiago", -33.45, -70.67),
    "sea": ("Seattle", 47.61, -122.33),
    "sin": ("Singapore", 1.35, 103.82),
    "sjc": ("San Jose", 37.34, -121.89),
    "syd": ("Sydney", -33.87, 151.21),
    "waw": ("Warsaw", 52.23, 21.01),
    "yyz": ("Toronto", 43.65, -79.38),
}
_CITY_NAMES: Final = {name.lower(): code for code, (name, _, _) in CITIES.items()}
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]


def city(name: str) -> tuple[float, float] | None:
    """(lat, lon) of a city of :data:`CITIES`, by its code or its name (any case)."""
    key = name.strip().lower()
    found = CITIES.get(key) or CITIES.get(_CITY_NAMES.get(key, ""))
    return (found[1], found[2]) if found else None


class Site(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One site of an anycast service: the identity it answers with (NSID or
    ``id.server``), its own unicast addresses, and where it is (``lat``/``lon``, or a
    ``city`` of :data:`CITIES`)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    unicast: Annotated[list[str], msgspec.Meta(min_length=1, max_length=8)]
    lat: Latitude | None = None
    lon: Longitude | None = None
    city: str | None = None
    port: Port | None = None  # its DNS port (UDP and TCP) there; default the target's

    def __post_init__(self) -> None:
        for addr in self.unicast:
            if not is_ip(addr):
                raise ValueError(f"site {self.id!r}: unicast {addr!r} is not an IP address")
        if len(set(self.unicast)) != len(self.unicast):
            raise ValueError(f"site {self.id!r}: unicast lists an address twice")
        if (self.lat is None) != (self.lon is None):
            raise ValueError(f"site {self.id!r}: give both lat and lon, or a city")
        if self.city is not None:
            where = city(self.city)
            if where is None:
                raise ValueError(
                    f"site {self.id!r}: city {self.city!r} is not in popwatch's table "
                    f"(give lat and lon instead; cities: {', '.join(sorted(CITIES))})"
                )
            if self.lat is None:
                msgspec.structs.force_setattr(self, "lat", where[0])
                msgspec.structs.force_setattr(self, "lon", where[1])
        elif self.lat is None:
            raise ValueError(f"site {self.id!r}: where is it? give lat and lon, or a city")


def _check_sites(t: DnsTarget) -> None:
    """Sites belong to an anycast target that identifies its sites; ids and addresses
    are each listed once."""
    if not t.sites:
        return
    if t.topology != "anycast":
        raise ValueError(f"sites are for an anycast target, not topology {t.topology!r}")
    if t.identify == "none":
        raise ValueError("sites need identify: nsid or chaos (to tell which site answered)")
    ids: dict[str, int] = {}
    addrs: dict[tuple[str, int], int] = {}
    for i, s in enumerate(t.sites):
        if s.id in ids:
            raise ValueError(f"sites[{i}].id: {s.id!r} is already the id of sites[{ids[s.id]}]")
        ids[s.id] = i
        for a in s.unicast:
            key = (ipaddress.ip_address(a).compressed, s.port or t.port)
            if key in addrs:
                raise ValueError(
                    f"sites[{i}].unicast: {a!r} is already an address of sites[{addrs[key]}]"
                )
            addrs[key] = i


class TraceSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A DNS target's ``trace``: how its path is traced, and how often (``every``)."""

    method: TraceMethod = "udp"
    every: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 900.0
    max_hops: MaxHops = 30
    queries_per_hop: QueriesPerHop = 3
    hop_timeout_s: HopTimeout = 1.0


class DnsTarget(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    kw_only=True,
    tag="dns",
    tag_field="kind",
):
    """One nameserver (or resolver) to measure, with the queries to time against it.

    ``kind: dns`` (the default when a target has no ``kind``).
    """

    name: Name
    topology: Literal["unicast", "anycast", "resolver"]
    server: str  # an IP address, or a host name resolved (A and AAAA) on a schedule
    queries: Annotated[list[Query], msgspec.Meta(min_length=1)]
    provider: str = ""
    port: Port = 53  # UDP and TCP
    tls_port: Port = 853  # DNS over TLS
    doh_port: Port = 443  # DNS over HTTPS
    doh_path: str = "/dns-query"
    tls_name: str | None = None  # name to verify the certificate against (and SNI)
    tls_ca: str | None = None  # CA bundle (PEM) for tls/https; the system store if unset
    tls_verify: bool = True
    transports: Annotated[list[TransportName], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["udp"]
    )
    families: Annotated[list[Literal[4, 6]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [4, 6]
    )
    interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    timeout: Seconds = 2.0
    identify: Identify = "nsid"
    rd: bool | None = None  # recursion desired; default off, on for topology "resolver"
    dnssec: bool = False  # set the DO bit
    edns: bool = True
    edns_bufsize: Annotated[int, msgspec.Meta(ge=512, le=65535)] = 1232
    # also ping the same addresses (a `kind: ping` target of the same name, see
    # derived_targets): icmp echo, or tcp handshake to `port`; None: no ping
    ping: PingMethod | None = None
    # also trace the path to the same addresses (a `kind: trace` target of the same name,
    # see derived_targets): the baseline an alert's path difference is taken against.
    # A method (udp, icmp), or TraceSettings; None: no baseline traces
    trace: TraceMethod | TraceSettings | None = None
    # the anycast service's sites, each also measured at its own unicast addresses,
    # every ``site_every`` intervals: how far each region is from its best site
    sites: Annotated[list[Site], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    site_every: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10

    def __post_init__(self) -> None:
        if not self.doh_path.startswith("/"):
            raise ValueError(f"doh_path {self.doh_path!r} must start with '/'")
        _check_server(self)
        if self.identify == "nsid" and not self.edns:
            raise ValueError("identify: nsid needs edns: true (NSID is an EDNS option)")
        for field in ("transports", "families"):
            seen = getattr(self, field)
            if len(set(seen)) != len(seen):
                raise ValueError(f"{field} lists a value twice: {seen}")
        _pin_family(self)
        _check_sites(self)
        if isinstance(self.trace, str):
            msgspec.structs.force_setattr(self, "trace", TraceSettings(method=self.trace))
        if self.trace is not None:
            try:
                trace_of(self)
            except ValueError as exc:
                raise ValueError(f"trace: {exc}") from None
        if self.rd is None:
            msgspec.structs.force_setattr(self, "rd", self.topology == "resolver")

    @property
    def recursion(self) -> bool:
        return bool(self.rd)


def _check_server(t: DnsTarget | PingTarget) -> None:
    """A run ends before the next one starts; the server is an address or a host name."""
    if t.timeout >= t.interval:
        raise ValueError(
            f"timeout ({t.timeout:g}s) must be shorter than interval ({t.interval:g}s)"
        )
    _check_host(t)


def _check_host(t: DnsTarget | PingTarget | TraceTarget) -> None:
    """The server is an IP address or a host name."""
    if not is_ip(t.server) and not _HOSTNAME_RE.match(t.server):
        raise ValueError(f"server {t.server!r} is neither an IP address nor a host name")


def _pin_family(t: DnsTarget | PingTarget | TraceTarget) -> None:
    """An IP-address server has one family: its own, whatever ``families`` said."""
    if is_ip(t.server):
        fam = ipaddress.ip_address(t.server).version
        msgspec.structs.force_setattr(t, "families", [fam])


class PingTarget(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    kw_only=True,
    tag="ping",
    tag_field="kind",
):
    """An address to ping (``kind: ping``): the network's share of a DNS round trip.

    ``method: icmp`` sends one ICMP echo request on an unprivileged ping socket (the
    probe's group must be in ``net.ipv4.ping_group_range``); ``method: tcp`` times the
    TCP handshake, SYN -> SYN-ACK, to ``port``. A DNS ``rtt_ms`` minus the ping ``rtt_ms``
    to the same address is the time the server itself spent.
    """

    name: Name
    topology: Literal["unicast", "anycast", "resolver"]
    server: str  # an IP address, or a host name resolved (A and AAAA) on a schedule
    method: PingMethod = "icmp"
    port: Port = 53  # the TCP port for method tcp
    provider: str = ""
    families: Annotated[list[Literal[4, 6]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [4, 6]
    )
    interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    timeout: Seconds = 2.0  # for the echo reply (icmp) or the handshake (tcp)

    def __post_init__(self) -> None:
        _check_server(self)
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a value twice: {self.families}")
        _pin_family(self)


class HttpTarget(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    kw_only=True,
    tag="http",
    tag_field="kind",
):
    """A web site to fetch (``kind: http``): TTFB by phase, DNS included."""

    name: Name
    topology: Literal["unicast", "anycast", "resolver"]  # the DNS behind the site
    url: str  # http:// or https://
    provider: str = ""
    method: Literal["GET", "HEAD"] = "GET"
    # statuses that count as success (of the last hop); empty: any 2xx
    expect_status: list[Annotated[int, msgspec.Meta(ge=100, le=599)]] = msgspec.field(
        default_factory=list
    )
    body_regex: str | None = None  # the body must match (searched, not anchored)
    follow_redirects: bool = True
    max_redirects: Annotated[int, msgspec.Meta(ge=0, le=30)] = 10
    # the most of a body the probe reads; a longer one is error "body: more than ..."
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 10 << 20
    interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    timeout: Seconds = 5.0  # per phase: dns, connect, tls, ttfb, body
    family: Literal[4, 6] | None = None  # connect over IPv4 or IPv6 only; unset: either
    resolver: str | None = None  # "IP[:PORT]" for the DNS phase; the system's if unset
    tls_ca: str | None = None
    tls_verify: bool = True

    def __post_init__(self) -> None:
        import urllib.parse

        url = urllib.parse.urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"url {self.url!r} must be http:// or https:// with a host")
        if self.body_regex is not None:
            try:
                re.compile(self.body_regex)
            except re.error as exc:
                raise ValueError(f"body_regex {self.body_regex!r}: {exc}") from None
        if self.timeout >= self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must be shorter than interval ({self.interval:g}s)"
            )
        if self.resolver is not None:
            parse_hostport(self.resolver, 53)


class TraceTarget(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    kw_only=True,
    tag="trace",
    tag_field="kind",
):
    """A path to trace (``kind: trace``), Paris-style and unprivileged: TTL-limited
    datagrams on one socket (one flow for the whole trace), the routers' ICMP
    time-exceeded read from the socket's error queue (``IP_RECVERR``, the offender's
    address), as ``tracepath`` does. ``method: udp`` sends a real DNS query to ``port``,
    so the last hop is the nameserver (and, with ``nsid``, its NSID names the site);
    ``method: icmp`` an echo request on a ping socket; ``method: tcp`` a SYN to ``port``,
    each from a new socket bound to the trace's one source port. One query at a time."""

    name: Name
    topology: Literal["unicast", "anycast", "resolver"]
    server: str  # an IP address, or a host name resolved (A and AAAA) on a schedule
    method: TraceMethod = "udp"
    port: Port = 53
    qname: str = "."
    nsid: bool = True
    provider: str = ""
    families: Annotated[list[Literal[4, 6]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [4, 6]
    )
    max_hops: MaxHops = 30
    queries_per_hop: QueriesPerHop = 3
    hop_timeout_s: HopTimeout = 1.0
    interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 900.0

    def __post_init__(self) -> None:
        _check_host(self)
        worst = self.timeout
        if worst >= self.interval:
            raise ValueError(
                f"a trace may take max_hops x queries_per_hop x hop_timeout_s = {worst:g} s: "
                f"that must be shorter than interval ({self.interval:g} s)"
            )
        try:
            msgspec.structs.force_setattr(self, "qname", dnswire.absolute_name(self.qname))
        except ValueError as exc:
            raise ValueError(f"qname {self.qname!r} is not a domain name: {exc}") from None
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a value twice: {self.families}")
        _pin_family(self)

    @property
    def timeout(self) -> float:
        """The longest one trace may take: every hop's every query timing out."""
        return self.max_hops * self.queries_per_hop * self.hop_timeout_s


AnyTarget = DnsTarget | HttpTarget | PingTarget | TraceTarget
Target = DnsTarget  # the name before other kinds existed


class TargetsFile(msgspec.Struct, forbid_unknown_fields=True):
    targets: list[AnyTarget]


def default_kind(data: dict[str, Any]) -> None:
    """A target without ``kind`` is a DNS target; a query type may be written in any case
    (``soa``, as on the command line)."""
    targets = data.get("targets")
    if isinstance(targets, list):
        for item in targets:
            if isinstance(item, dict):
                item.setdefault("kind", "dns")
                for query in item.get("queries") or []:
                    if isinstance(query, dict) and isinstance(query.get("qtype"), str):
                        query["qtype"] = query["qtype"].upper()


def check_unique(file: str, targets: list[AnyTarget], key: str = "targets") -> None:
    """Target names are series identities: two targets may not share one."""
    seen: dict[str, int] = {}
    for i, t in enumerate(targets):
        if t.name in seen:
            raise ConfigError(
                f"{file}: {key}[{i}].name: {t.name!r} is already the name of {key}[{seen[t.name]}]"
            )
        seen[t.name] = i


def load_targets(path: str | os.PathLike[str]) -> list[AnyTarget]:
    """Load a targets file (a mapping with one key, ``targets``)."""
    p = Path(path)
    data = read_yaml(p)
    default_kind(data)
    parsed: TargetsFile = convert(data, TargetsFile, str(p))
    check_unique(str(p), parsed.targets)
    return parsed.targets


def derived_targets(targets: list[AnyTarget]) -> list[AnyTarget]:
    """Targets measured because another target asks for them: a DNS target's ``ping``
    and ``trace``.

    Each has the DNS target's name, so the kinds' points share the ``target`` tag, and
    its server, topology, provider and families. The ping target has its interval and
    timeout too, and over tcp connects to the DNS ``port``. The trace target follows the
    ``trace`` settings; by udp it sends the target's first query to ``port`` (with NSID
    when the target identifies its sites by NSID).
    """
    out: list[AnyTarget] = []
    for t in targets:
        if not isinstance(t, DnsTarget):
            continue
        if t.ping is not None:
            out.append(
                PingTarget(
                    name=t.name,
                    topology=t.topology,
                    server=t.server,
                    method=t.ping,
                    port=t.port,
                    provider=t.provider,
                    families=list(t.families),
                    interval=t.interval,
                    timeout=t.timeout,
                )
            )
        if t.trace is not None:
            out.append(trace_of(t))
    return out


def trace_of(t: DnsTarget) -> TraceTarget:
    """The trace of a DNS target's path: its name, server, port, families and first
    query, by its ``trace`` settings (udp, every 900 s, when it has none)."""
    how = t.trace if isinstance(t.trace, TraceSettings) else TraceSettings()
    return TraceTarget(
        name=t.name,
        topology=t.topology,
        server=t.server,
        method=how.method,
        port=t.port,
        qname=t.queries[0].qname,
        nsid=t.identify == "nsid",
        provider=t.provider,
        families=list(t.families),
        max_hops=how.max_hops,
        queries_per_hop=how.queries_per_hop,
        hop_timeout_s=how.hop_timeout_s,
        interval=how.every,
    )
