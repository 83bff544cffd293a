"""Kernel delay where the kernel has it: one netem class per region on each server link.

A server's link is a veth pair. On each end an HTB root sends a packet, by its region's
prefix (the source toward the server, the destination back from it), to a class whose
netem child holds it for half the path's round trip, with the path's jitter; loss is
applied toward the server only, and a dark (failed) link loses everything. The same
parameters the user-space wire takes (:mod:`popwatch_lab.wire`), so the two are
interchangeable.

This machine's kernel has no netem (``CONFIG_NET_SCH_NETEM`` unset), so here the lab
uses the wire; :func:`commands` is tested as text.
"""

from __future__ import annotations

from typing import Any

from popwatch_lab.netns import IpError, run

DEFAULT_CLASS = 999


def available(netns_name: str) -> bool:
    """Whether a netem qdisc can be made (tried on ``lo`` in ``netns_name``)."""
    try:
        run(
            "ip",
            "netns",
            "exec",
            netns_name,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
        )
    except (IpError, OSError):
        return False
    run("ip", "netns", "exec", netns_name, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
    return True


def _netem(delay_ms: float, jitter_ms: float, loss: float) -> list[str]:
    out = ["netem", "delay", f"{delay_ms:.3f}ms"]
    if jitter_ms > 0:
        out += [f"{jitter_ms:.3f}ms", "distribution", "normal"]
    if loss > 0:
        out += ["loss", f"{loss * 100:.4f}%"]
    return out


def commands(
    dev: str,
    toward_server: bool,
    peers: dict[str, list[str]],
    params: dict[str, Any],
    create: bool,
) -> list[list[str]]:
    """``tc`` argument lists that shape one end of a server link.

    ``dev`` sends toward the server (``toward_server``: the backbone's end; match the
    source) or away from it (the server's end; match the destination). ``peers``: region
    -> its prefixes; ``params``: the link's ``paths`` (region -> [rtt_ms, jitter_ms]),
    ``extra_ms``, ``loss``, ``dark``. ``create`` builds the tree; otherwise only the
    netem parameters change.
    """
    out: list[list[str]] = []
    extra = float(params.get("extra_ms", 0.0)) / 2
    loss = 1.0 if params.get("dark") else float(params.get("loss", 0.0)) if toward_server else 0.0
    side = "src" if toward_server else "dst"
    verb = "add" if create else "change"
    if create:
        out.append(
            [
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "handle",
                "1:",
                "htb",
                "default",
                str(DEFAULT_CLASS),
            ]
        )
    classes = [(DEFAULT_CLASS, None, 0.0, 0.0)]
    for i, (peer, (rtt, jitter)) in enumerate(sorted(params["paths"].items()), start=10):
        classes.append((i, peer, rtt / 2, jitter))
    for cls, peer, one_way, jitter in classes:
        if create:
            out.append(
                [
                    "class",
                    "add",
                    "dev",
                    dev,
                    "parent",
                    "1:",
                    "classid",
                    f"1:{cls}",
                    "htb",
                    "rate",
                    "10gbit",
                ]
            )
        out.append(
            [
                "qdisc",
                verb,
                "dev",
                dev,
                "parent",
                f"1:{cls}",
                "handle",
                f"{cls}:",
                *_netem(one_way + extra, jitter, loss),
            ]
        )
        if create and peer is not None:
            for prefix in peers[peer]:
                proto, match = ("ipv6", "ip6") if ":" in prefix else ("ip", "ip")
                out.append(
                    [
                        "filter",
                        "add",
                        "dev",
                        dev,
                        "parent",
                        "1:",
                        "protocol",
                        proto,
                        "prio",
                        "1",
                        "u32",
                        "match",
                        match,
                        side,
                        prefix,
                        "flowid",
                        f"1:{cls}",
                    ]
                )
    return out


def apply(netns_name: str, cmds: list[list[str]]) -> None:
    """Run ``tc`` with each argument list, inside ``netns_name``."""
    for args in cmds:
        run("ip", "netns", "exec", netns_name, "tc", *args)
