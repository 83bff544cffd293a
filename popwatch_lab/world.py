"""The lab's world as data: where each region and site is, its addresses, its delays.

Pure: no namespace, process or socket here, so the routing decision and the delay
matrix can be tested without root. Everything the lab creates lives in two ranges that
no real network uses: 198.18.0.0/15 (RFC 2544 benchmarking) and fd00::/8 (ULA).

Addresses (``n`` is a link's number, the same digits in both families):

* link ``n`` between the backbone and a node: ``198.18.n.0/24`` and ``fd00:1:0:n::/64``,
  the backbone ``.1``/``::1``, the node ``.2``/``::2``;
* a server (a site, the unicast server) sits behind its own edge router, one more hop,
  so a path is region -> backbone -> the server's edge -> the server, and a failover
  changes the path's second hop: the edge is ``.3``/``::3`` on link ``n``, and the
  edge and its server share ``198.18.(n+100).0/24`` and ``fd00:1:0:(n+100)::/64`` (the
  edge ``.1``, the server ``.2``); the server keeps ``.2``/``::2`` of link ``n`` as its
  own address;
* the anycast service: ``198.19.53.53`` and ``fd00:53::53`` (prefixes ``198.19.53.0/24``
  and ``fd00:53::/64``), on every site's loopback;
* the core (InfluxDB, collector, Alertmanager): ``198.19.255.2``, joined to the host's
  own namespace by ``198.19.255.0/30`` so a browser on the host reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

#: one millisecond of round trip per 100 km: light in fibre covers about 200 km per ms,
#: there and back
KM_PER_RTT_MS: Final = 100.0
#: the shortest path the lab models (a metro hop): 1 ms of round trip
MIN_KM: Final = 100.0

ANYCAST_V4: Final = "198.19.53.53"
ANYCAST_V6: Final = "fd00:53::53"
ANYCAST_PREFIX_V4: Final = "198.19.53.0/24"
ANYCAST_PREFIX_V6: Final = "fd00:53::/64"
CORE_ADDRESS: Final = "198.19.255.2"
HOST_ADDRESS: Final = "198.19.255.1"
HOST_LINK: Final = "198.19.255.0/30"
ZONE: Final = "lab.example."
FIRST_SERIAL: Final = 2026010100

NodeKind = Literal["region", "site", "unicast", "core"]


@dataclass(frozen=True)
class Place:
    """A city on the map."""

    city: str
    country: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Node:
    """A namespace joined to the backbone by link number ``link``."""

    name: str
    kind: NodeKind
    link: int
    place: Place

    @property
    def netns(self) -> str:
        return f"pwl-{self.name}"

    @property
    def bb_dev(self) -> str:
        """The link's device on the backbone's side (at most 15 characters)."""
        prefix = {"region": "r-", "site": "s-", "unicast": "s-", "core": ""}[self.kind]
        return (prefix + self.name)[:15]

    @property
    def v4(self) -> str:
        """The node's own address on its link."""
        return f"198.18.{self.link}.2"

    @property
    def v6(self) -> str:
        return f"fd00:1:0:{self.link}::2"

    @property
    def bb_v4(self) -> str:
        """The backbone's address on the node's link."""
        return f"198.18.{self.link}.1"

    @property
    def bb_v6(self) -> str:
        return f"fd00:1:0:{self.link}::1"

    @property
    def prefix_v4(self) -> str:
        return f"198.18.{self.link}.0/24"

    @property
    def prefix_v6(self) -> str:
        return f"fd00:1:0:{self.link}::/64"

    @property
    def edge_netns(self) -> str:
        """A server's edge router, between its shaped link and the server."""
        return f"pwl-{self.name}-edge"

    @property
    def edge_v4(self) -> str:
        """The edge's address on the node's link: what a trace's second hop shows."""
        return f"198.18.{self.link}.3"

    @property
    def edge_v6(self) -> str:
        return f"fd00:1:0:{self.link}::3"

    def inner(self, host: int) -> tuple[str, str]:
        """An address on the link between the edge (``host`` 1) and its server (2)."""
        return f"198.18.{self.link + 100}.{host}", f"fd00:1:0:{self.link + 100}::{host}"

    @property
    def table(self) -> int:
        """A region's own routing table in the backbone: its view of the anycast prefix."""
        return 100 + self.link


FRANKFURT: Final = Place("Frankfurt", "DE", 50.11, 8.68)

REGIONS: Final = (
    Node("eu-central", "region", 10, FRANKFURT),
    Node("us-east", "region", 11, Place("New York", "US", 40.71, -74.01)),
    Node("ap-south", "region", 12, Place("Mumbai", "IN", 19.08, 72.88)),
    Node("sa-east", "region", 13, Place("Sao Paulo", "BR", -23.55, -46.63)),
)
SITES: Final = (
    Node("ams", "site", 20, Place("Amsterdam", "NL", 52.37, 4.90)),
    Node("iad", "site", 21, Place("Ashburn", "US", 39.04, -77.49)),
    Node("sin", "site", 22, Place("Singapore", "SG", 1.35, 103.82)),
)
#: the unicast nameserver and the web page's origin, in eu-central's city
UNICAST: Final = Node("uni", "unicast", 30, FRANKFURT)
UNICAST_REGION: Final = "eu-central"
CORE: Final = Node("core", "core", 40, FRANKFURT)
BACKBONE_NETNS: Final = "pwl-bb"
HOST_DEV: Final = "pwl-host"


def distance_km(a: Place, b: Place) -> float:
    """Great-circle distance (haversine, Earth radius 6371 km)."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def path_rtt_ms(region: Node, server: Node) -> float:
    """The round trip the lab gives the path from ``region`` to ``server``."""
    return round(max(distance_km(region.place, server.place), MIN_KM) / KM_PER_RTT_MS, 2)


@dataclass(frozen=True)
class World:
    """The lab's nodes; the delay matrix and the routing follow from them."""

    regions: tuple[Node, ...] = REGIONS
    sites: tuple[Node, ...] = SITES
    unicast: Node = UNICAST
    core: Node = CORE
    names: dict[str, Node] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        nodes = [*self.regions, *self.sites, self.unicast, self.core]
        object.__setattr__(self, "names", {n.name: n for n in nodes})
        if len(self.names) != len(nodes):
            raise ValueError("two nodes share a name")
        if len({n.link for n in nodes}) != len(nodes):
            raise ValueError("two nodes share a link number")

    @property
    def servers(self) -> tuple[Node, ...]:
        """The nodes whose link carries the delay matrix: the sites and the unicast."""
        return (*self.sites, self.unicast)

    @property
    def netns(self) -> list[str]:
        """Every namespace the lab makes, the backbone first."""
        nodes = [n.netns for n in self.names.values()]
        return [BACKBONE_NETNS, *nodes, *(n.edge_netns for n in self.servers)]

    def region(self, name: str) -> Node:
        node = self.names.get(name)
        if node is None or node.kind != "region":
            raise KeyError(f"no region {name!r} (regions: {', '.join(self.region_names)})")
        return node

    def site(self, name: str) -> Node:
        node = self.names.get(name)
        if node is None or node.kind != "site":
            raise KeyError(f"no site {name!r} (sites: {', '.join(self.site_names)})")
        return node

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def rtt_matrix(self) -> dict[str, dict[str, float]]:
        """server -> region -> round trip in ms (sites and the unicast server)."""
        return {s.name: {r.name: path_rtt_ms(r, s) for r in self.regions} for s in self.servers}

    def nearest(self, region: str, announced: set[str]) -> str | None:
        """The announced site nearest ``region`` (what BGP's shortest path picks here),
        or None when no site is announced."""
        r = self.region(region)
        live = [s for s in self.sites if s.name in announced]
        if not live:
            return None
        return min(live, key=lambda s: (path_rtt_ms(r, s), s.name)).name

    def catchment(self, announced: set[str]) -> dict[str, str | None]:
        """region -> the site its anycast route points to."""
        return {r.name: self.nearest(r.name, announced) for r in self.regions}


WORLD: Final = World()


#: the lab's AS numbers (RFC 5398's documentation range): the backbone's, each server's
#: link's (its number added), the anycast service's
BACKBONE_AS: Final = 64500
ANYCAST_AS: Final = 64553


def server_as(node: Node) -> int:
    return BACKBONE_AS + node.link


def asn_text(world: World = WORLD) -> str:
    """The lab's prefix -> ASN table, in pyasn's format (the collector's ``asn_file``):
    the regions' links are the backbone's, each server's link (its edge router) its own
    AS, the anycast prefix the anycast service's."""
    lines = ["; popwatch-lab: prefix -> ASN (pyasn's IPASN format)"]
    for r in world.regions:
        lines += [f"{r.prefix_v4}\t{BACKBONE_AS}", f"{r.prefix_v6}\t{BACKBONE_AS}"]
    for n in world.servers:
        lines += [f"{n.prefix_v4}\t{server_as(n)}", f"{n.prefix_v6}\t{server_as(n)}"]
    lines += [f"{ANYCAST_PREFIX_V4}\t{ANYCAST_AS}", f"{ANYCAST_PREFIX_V6}\t{ANYCAST_AS}"]
    return "\n".join(lines) + "\n"


def zone_text(serial: int, world: World = WORLD) -> str:
    """The lab's zone, the same at every site (but for its serial)."""
    u = world.unicast
    return f"""$ORIGIN {ZONE}
$TTL 60
@        SOA   anycast hostmaster {serial} 60 30 3600 60
@        NS    anycast
anycast  A     {ANYCAST_V4}
anycast  AAAA  {ANYCAST_V6}
unicast  A     {u.v4}
unicast  AAAA  {u.v6}
www      A     {u.v4}
www      AAAA  {u.v6}
"""
