"""Resolve nameserver host names (A and AAAA) with aiodns.

c-ares caches answers, so every round of resolution uses a fresh resolver: a changed
address is seen at the next round, not when some cache expires.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from probe.configfile import is_ip

log = logging.getLogger("popwatch.probe.resolve")

_RRTYPE = {4: "A", 6: "AAAA"}


class ResolveError(Exception):
    """A host name gave no address in any family asked for."""


async def resolve(
    host: str, families: Iterable[int], nameserver: str | None = None, lookup_timeout: float = 5.0
) -> list[tuple[int, str]]:
    """``[(family, address), ...]`` for ``host``; an IP literal is returned as it is.

    ``nameserver`` is ``"IP"`` or ``"IP:PORT"`` (``"[v6]:PORT"``); the system's resolvers
    are used when it is ``None``. A family with no address is logged and left out.
    """
    if is_ip(host):
        fam = 6 if ":" in host else 4
        return [(fam, host)] if fam in families else []
    import aiodns  # only a probe with host-name servers pays for c-ares (a few MB of RSS)

    servers = [nameserver] if nameserver else None
    out: list[tuple[int, str]] = []
    problems: list[str] = []
    async with aiodns.DNSResolver(nameservers=servers, timeout=lookup_timeout, tries=1) as resolver:
        for fam in families:
            try:
                result = await resolver.query_dns(host, _RRTYPE[fam])
            except aiodns.error.DNSError as exc:
                problems.append(f"{_RRTYPE[fam]}: {exc.args[1] if len(exc.args) > 1 else exc}")
                continue
            addrs = sorted({rr.data.addr for rr in result.answer if hasattr(rr.data, "addr")})
            out.extend((fam, a) for a in addrs)
    if not out:
        raise ResolveError(f"{host}: no address ({'; '.join(problems) or 'empty answer'})")
    for p in problems:
        log.info("resolve %s: %s", host, p)
    return out
