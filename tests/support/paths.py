"""Paths of several router hops for the trace tests, built of network namespaces.

    src --- r1 ==(ra | rb)== r3 --- dst

Every link is a veth pair with an IPv4 /24 and an IPv6 /64 of its own (10.77.L.0/24 and
fd00:77:0:L::/64, link L). r1 reaches r3 over two equal routes, through ra and through
rb (ECMP, hashed per flow on the addresses, the protocol and the ports, and IPv6's flow
label: ``fib_multipath_hash_policy`` 3), so a trace that keeps its flow sees one of them
and one that changes its ports may see the other. The routers answer TTL-exceeded at
full rate. ``src`` may open ping sockets. The names carry the test process's pid, so two
runs do not meet.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

LINKS = {  # link number: (left node, right node)
    1: ("src", "r1"),
    2: ("r1", "ra"),
    3: ("r1", "rb"),
    4: ("ra", "r3"),
    5: ("rb", "r3"),
    6: ("r3", "dst"),
}
#: addresses nothing answers, routed into a blackhole at r3, and into a loop r1 <-> ra
SILENT_V4, SILENT_V6 = "10.77.90.1", "fd00:77:0:90::1"
LOOP_V4, LOOP_V6 = "10.77.91.1", "fd00:77:0:91::1"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Paths:
    tag: str = field(default_factory=lambda: f"pwt{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def v4(self, link: int, node: str) -> str:
        left, _ = LINKS[link]
        return f"10.77.{link}.{1 if node == left else 2}"

    def v6(self, link: int, node: str) -> str:
        left, _ = LINKS[link]
        return f"fd00:77:0:{link}::{1 if node == left else 2}"

    def ip(self, node: str, *args: str) -> None:
        _run("ip", "-n", self.ns(node), *args)

    def sysctl(self, node: str, key: str, value: str) -> None:
        _run("ip", "netns", "exec", self.ns(node), "sysctl", "-qw", f"{key}={value}")

    def exec(self, node: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *argv]

    def __enter__(self) -> Paths:
        nodes = sorted({n for pair in LINKS.values() for n in pair})
        for n in nodes:
            _run("ip", "netns", "add", self.ns(n))
            self.made.append(self.ns(n))
            self.ip(n, "link", "set", "lo", "up")
            for key, value in (
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv6.icmp.ratelimit", "0"),
                # the 5-tuple (and IPv6's flow label), read from the headers: policy 3
                # with these fields, not 1, which takes the hash a packet already has,
                # and a veth carries the sending socket's own random hash across the
                # namespaces (a router on another machine never sees it)
                ("net.ipv4.fib_multipath_hash_policy", "3"),
                ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
                ("net.ipv6.fib_multipath_hash_policy", "3"),
                ("net.ipv6.fib_multipath_hash_fields", "0x003f"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ):
                self.sysctl(n, key, value)
        for link, (a, b) in LINKS.items():
            da, db = f"l{link}{a}"[:15], f"l{link}{b}"[:15]
            _run(
                "ip", "link", "add", da, "netns", self.ns(a), "type", "veth",
                "peer", "name", db, "netns", self.ns(b),
            )  # fmt: skip
            for node, dev in ((a, da), (b, db)):
                self.ip(node, "addr", "add", f"{self.v4(link, node)}/24", "dev", dev)
                self.ip(node, "-6", "addr", "add", f"{self.v6(link, node)}/64", "dev", dev, "nodad")
                self.ip(node, "link", "set", dev, "up")
        self._routes()
        return self

    def _route(self, node: str, dst4: str, dst6: str, *via: tuple[int, str]) -> None:
        """Routes to ``dst4``/``dst6`` at ``node`` via the far end of each (link, peer)."""
        for fam, dst, addr in (("-4", dst4, self.v4), ("-6", dst6, self.v6)):
            if len(via) == 1:
                link, peer = via[0]
                self.ip(node, fam, "route", "add", dst, "via", addr(link, peer))
            else:
                hops = []
                for link, peer in via:
                    hops += ["nexthop", "via", addr(link, peer)]
                self.ip(node, fam, "route", "add", dst, *hops)

    def _routes(self) -> None:
        far4, far6 = "10.77.0.0/16", "fd00:77::/32"
        self._route("src", "default", "default", (1, "r1"))
        self._route("dst", "default", "default", (6, "r3"))
        # r1: to dst (and the blackhole) over both; the loop's prefix to ra
        self._route("r1", "10.77.6.0/24", "fd00:77:0:6::/64", (2, "ra"), (3, "rb"))
        self._route("r1", "10.77.90.0/24", "fd00:77:0:90::/64", (2, "ra"), (3, "rb"))
        self._route("r1", "10.77.91.0/24", "fd00:77:0:91::/64", (2, "ra"))
        self._route("r1", "10.77.4.0/24", "fd00:77:0:4::/64", (2, "ra"))
        self._route("r1", "10.77.5.0/24", "fd00:77:0:5::/64", (3, "rb"))
        for mid, link_in, link_out in (("ra", 2, 4), ("rb", 3, 5)):
            self._route(mid, "10.77.1.0/24", "fd00:77:0:1::/64", (link_in, "r1"))
            self._route(mid, "10.77.6.0/24", "fd00:77:0:6::/64", (link_out, "r3"))
            self._route(mid, "10.77.90.0/24", "fd00:77:0:90::/64", (link_out, "r3"))
        # ra sends the loop's prefix back to r1, which sends it to ra
        self._route("ra", "10.77.91.0/24", "fd00:77:0:91::/64", (2, "r1"))
        self._route("r3", far4, far6, (4, "ra"), (5, "rb"))
        for fam, dst in (("-4", "10.77.90.0/24"), ("-6", "fd00:77:0:90::/64")):
            self.ip("r3", fam, "route", "add", "blackhole", dst)

    def __exit__(self, *exc: object) -> None:
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    @property
    def dst_v4(self) -> str:
        return self.v4(6, "dst")

    @property
    def dst_v6(self) -> str:
        return self.v6(6, "dst")


__all__ = ["LOOP_V4", "LOOP_V6", "SILENT_V4", "SILENT_V6", "Paths"]
