"""The lab's network: namespaces, links, addresses and the backbone's routes.

* Each region and the core join the backbone by a veth pair (no delay of their own).
* Each server (the sites and the unicast server) joins it by a shaped link to its edge
  router: two TUN devices and the user-space wire (:mod:`popwatch_lab.wire`), or, where
  the kernel has ``netem``, a veth pair with a netem class per region
  (:mod:`popwatch_lab.netem`). The edge reaches its server by a veth pair: a path from a
  region is three hops, the backbone, the server's edge, the server.
* The backbone routes each region's packets for the anycast prefix by the region's own
  table (``ip rule iif``): its nearest announced site, as BGP's shortest path would.
  Everything else follows the main table. The backbone answers TTL-exceeded at full
  rate (``icmp_ratelimit`` 0), so a trace from a region shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Literal

from popwatch_lab import netem, netns
from popwatch_lab.netns import ip
from popwatch_lab.world import (
    ANYCAST_PREFIX_V4,
    ANYCAST_PREFIX_V6,
    ANYCAST_V4,
    ANYCAST_V6,
    BACKBONE_NETNS,
    CORE_ADDRESS,
    HOST_ADDRESS,
    HOST_DEV,
    HOST_LINK,
    Node,
    World,
)

Shaper = Literal["wire", "netem"]
BB = BACKBONE_NETNS


def _addr(netns_name: str | None, dev: str, v4: str, v6: str | None) -> None:
    ip("addr", "add", v4, "dev", dev, netns=netns_name)
    if v6:
        ip("-6", "addr", "add", v6, "dev", dev, "nodad", netns=netns_name)
    ip("link", "set", dev, "up", netns=netns_name)


def _veth(node: Node) -> None:
    """A veth pair: ``node.bb_dev`` in the backbone, ``bb`` in the node's namespace."""
    peer = ["peer", "name", "bb", "netns", node.netns]
    ip("link", "add", node.bb_dev, "netns", BB, "type", "veth", *peer)


def choose_shaper(requested: str) -> Shaper:
    """``auto``: netem where this kernel has it, else the wire."""
    if requested in ("wire", "netem"):
        return requested  # type: ignore[return-value]
    return "netem" if netem.available(BB) else "wire"


def create(world: World) -> None:
    """The namespaces, links and addresses; the servers' links not yet shaped."""
    for name in world.netns:
        ip("netns", "add", name)
        ip("link", "set", "lo", "up", netns=name)
    for key, value in (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        # a trace sends several probes per hop: answer each
        ("net.ipv4.icmp_ratelimit", "0"),
        ("net.ipv6.icmp.ratelimit", "0"),
    ):
        netns.sysctl(BB, key, value)
        for node in world.servers:
            netns.sysctl(node.edge_netns, key, value)
    for node in world.servers:  # the edge's own link to its server
        edge, (e4, e6), (s4, s6) = node.edge_netns, node.inner(1), node.inner(2)
        ip("link", "add", "srv", "type", "veth", "peer", "name", "bb", "netns", node.netns,
           netns=edge)  # fmt: skip
        _addr(edge, "srv", f"{e4}/24", f"{e6}/64")
        _addr(node.netns, "bb", f"{s4}/24", f"{s6}/64")
        ip("addr", "add", f"{node.v4}/32", "dev", "bb", netns=node.netns)
        ip("-6", "addr", "add", f"{node.v6}/128", "dev", "bb", "nodad", netns=node.netns)
        ip("route", "add", "default", "via", e4, netns=node.netns)
        ip("-6", "route", "add", "default", "via", e6, netns=node.netns)
        for dst4, dst6 in ((f"{node.v4}/32", f"{node.v6}/128"),
                           (ANYCAST_PREFIX_V4, ANYCAST_PREFIX_V6)):  # fmt: skip
            ip("route", "add", dst4, "via", s4, "dev", "srv", netns=edge)
            ip("-6", "route", "add", dst6, "via", s6, "dev", "srv", netns=edge)
    for node in [*world.regions, world.core]:
        _veth(node)
    for node in world.regions:
        # the probe's ICMP echo uses an unprivileged ping socket
        netns.sysctl(node.netns, "net.ipv4.ping_group_range", "0 2147483647")
    for node in [*world.regions, world.core]:  # the servers' links: link_servers
        _addr(BB, node.bb_dev, f"{node.bb_v4}/24", f"{node.bb_v6}/64")
        _addr(node.netns, "bb", f"{node.v4}/24", f"{node.v6}/64")
        ip("route", "add", "default", "via", node.bb_v4, netns=node.netns)
        ip("-6", "route", "add", "default", "via", node.bb_v6, netns=node.netns)
    # the core is also the host's window on the lab: one /30, nothing routed
    ip("link", "add", HOST_DEV, "type", "veth", "peer", "name", "host", "netns", world.core.netns)
    _addr(None, HOST_DEV, f"{HOST_ADDRESS}/30", None)
    _addr(world.core.netns, "host", f"{CORE_ADDRESS}/30", None)
    ip("route", "add", HOST_LINK, "via", world.core.v4, netns=BB)
    for site in world.sites:
        ip("addr", "add", f"{ANYCAST_V4}/32", "dev", "lo", netns=site.netns)
        ip("-6", "addr", "add", f"{ANYCAST_V6}/128", "dev", "lo", netns=site.netns)


def link_servers(world: World, shaper: Shaper) -> None:
    """The servers' shaped links, backbone to edge: TUN pairs for the wire, or veth pairs
    for netem (where the edge answers ARP and ND for its server's own address)."""
    for node in world.servers:
        edge = node.edge_netns
        if shaper == "wire":
            ip("tuntap", "add", "dev", node.bb_dev, "mode", "tun", netns=BB)
            ip("tuntap", "add", "dev", "bb", "mode", "tun", netns=edge)
        else:
            peer = ["peer", "name", "bb", "netns", edge]
            ip("link", "add", node.bb_dev, "netns", BB, "type", "veth", *peer)
            netns.sysctl(edge, "net.ipv4.conf.all.proxy_arp", "1")
            netns.sysctl(edge, "net.ipv6.conf.all.proxy_ndp", "1")
        _addr(BB, node.bb_dev, f"{node.bb_v4}/24", f"{node.bb_v6}/64")
        _addr(edge, "bb", f"{node.edge_v4}/24", f"{node.edge_v6}/64")
        if shaper != "wire":
            ip("-6", "neigh", "add", "proxy", node.v6, "dev", "bb", netns=edge)


def route_servers(world: World) -> None:
    """Each edge's default route, once its link carries packets (the wire is up)."""
    for node in world.servers:
        edge = node.edge_netns
        ip("route", "add", "default", "via", node.bb_v4, "dev", "bb", netns=edge)
        ip("-6", "route", "add", "default", "via", node.bb_v6, "dev", "bb", netns=edge)


def wire_spec(world: World, params: dict[str, dict[str, object]]) -> dict[str, object]:
    """The wire's spec: its links, the regions it knows by prefix, and the parameters."""
    return {
        "links": {
            n.name: {"outer": [BB, n.bb_dev], "inner": [n.edge_netns, "bb"]} for n in world.servers
        },
        "peers": {r.name: [r.prefix_v4, r.prefix_v6] for r in world.regions},
        "params": params,
    }


def write_spec(path: Path, spec: dict[str, object]) -> None:
    """Write atomically: the wire may re-read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- routing


def add_region_rules(world: World) -> None:
    """Each region's packets look up the region's own table first (then the main one)."""
    for r in world.regions:
        for fam in ("-4", "-6"):
            ip(
                fam,
                "rule",
                "add",
                "iif",
                r.bb_dev,
                "lookup",
                str(r.table),
                "pref",
                str(r.table),
                netns=BB,
            )


def set_route(region: Node, site: Node | None) -> None:
    """Point ``region``'s anycast route at ``site`` (None: unreachable, no site left)."""
    table = str(region.table)
    if site is None:
        ip("route", "replace", "unreachable", ANYCAST_PREFIX_V4, "table", table, netns=BB)
        ip("-6", "route", "replace", "unreachable", ANYCAST_PREFIX_V6, "table", table, netns=BB)
        return
    ip(
        "route",
        "replace",
        ANYCAST_PREFIX_V4,
        "via",
        site.v4,
        "dev",
        site.bb_dev,
        "table",
        table,
        netns=BB,
    )
    ip(
        "-6",
        "route",
        "replace",
        ANYCAST_PREFIX_V6,
        "via",
        site.v6,
        "dev",
        site.bb_dev,
        "table",
        table,
        netns=BB,
    )


def routed_site(world: World, region: Node) -> str | None:
    """The site the backbone's table for ``region`` points to now, as the kernel says."""
    text = ip("-j", "route", "show", "table", str(region.table), netns=BB, check=False)
    try:
        out = json.loads(text)
    except ValueError:  # a table with no route yet does not exist ("[" and an error)
        return None
    for route in out:
        if route.get("dst") == ANYCAST_PREFIX_V4 and route.get("type", "unicast") == "unicast":
            for s in world.sites:
                if route.get("dev") == s.bb_dev:
                    return s.name
    return None


def set_region_link(region: Node, up: bool) -> None:
    """Cut a region off the backbone (or mend it): its link's backbone end down or up."""
    ip("link", "set", region.bb_dev, "up" if up else "down", netns=BB)


# ----------------------------------------------------------------------------- teardown


def destroy(world: World, netns_was_mount: bool) -> None:
    """Every namespace of the lab (their processes first) and the host's link.

    ``ip netns add`` bind-mounts /run/netns onto itself the first time; when the lab did
    that (``netns_was_mount`` false) and no namespace is left, the mount goes too.
    """
    for name in world.netns:
        for pid in netns.pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    for name in world.netns:
        if netns.exists(name):
            ip("netns", "del", name, check=False)
    ip("link", "del", HOST_DEV, check=False)
    for _ in range(50):  # a namespace goes once its last reference does
        if not any(netns.exists(n) for n in world.netns):
            break
        time.sleep(0.1)
    if not netns_was_mount and os.path.ismount(netns.NETNS_DIR) and not netns.listed():
        netns.run("umount", str(netns.NETNS_DIR), check=False)
