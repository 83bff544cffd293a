"""Prefix -> ASN, from a file the operator supplies: the AS of each hop of a trace, so a
path difference can say which networks it crossed. No lookup leaves the collector: the
table is the file, read once at start.

The format is pyasn's IPASN data file (what ``pyasn_util_convert.py`` writes from a
RouteViews or RIPE RIS dump): one ``PREFIX<tab>ASN`` per line, IPv4 and IPv6, and lines
starting with ``;`` are comments. Whitespace may stand for the tab; ``AS64500`` is read
as 64500. A line that is neither is an error naming the file and the line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

#: prefixes read at most (a full table has about 1.2 million)
MAX_PREFIXES: Final = 5_000_000


class AsnFileError(ValueError):
    """The file is unreadable, or a line of it is no prefix and ASN."""


class AsnTable:
    """Longest-prefix match from address to ASN."""

    def __init__(self, entries: Iterable[tuple[str, int]] = ()) -> None:
        #: family -> prefix length -> network address as an int -> ASN
        self._by: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        self._count = 0
        for prefix, asn in entries:
            self.add(ipaddress.ip_network(prefix, strict=False), asn)

    def add(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, asn: int) -> None:
        by_key = self._by[net.version].setdefault(net.prefixlen, {})
        key = int(net.network_address)
        self._count += key not in by_key
        by_key[key] = asn

    def __len__(self) -> int:
        return self._count

    def lookup(self, address: str) -> int | None:
        """The ASN of the longest prefix holding ``address`` (None: none does, or it is
        no address)."""
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return None
        bits = addr.max_prefixlen
        value = int(addr)
        lengths = self._by[addr.version]
        for length in sorted(lengths, reverse=True):
            key = value >> (bits - length) << (bits - length) if length else 0
            asn = lengths[length].get(key)
            if asn is not None:
                return asn
        return None

    def path(self, addresses: Sequence[str | None]) -> list[int]:
        """The AS path of a trace's hops: each known ASN once, in order (a hop without
        an answer or a known AS is left out)."""
        out: list[int] = []
        for a in addresses:
            asn = self.lookup(a) if a else None
            if asn is not None and (not out or out[-1] != asn):
                out.append(asn)
        return out

    @classmethod
    def load(cls, path: str | Path) -> AsnTable:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8", errors="strict")
        except (OSError, UnicodeDecodeError) as exc:
            raise AsnFileError(f"{p}: cannot read it: {exc}") from None
        table = cls()
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith(";") or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise AsnFileError(f"{p}:{n}: expected PREFIX and ASN, got {raw[:80]!r}")
            try:
                net = ipaddress.ip_network(fields[0], strict=False)
            except ValueError:
                raise AsnFileError(f"{p}:{n}: {fields[0][:60]!r} is no prefix") from None
            digits = fields[1].upper().removeprefix("AS")
            if not digits.isdigit() or not 0 <= int(digits) < 2**32:
                raise AsnFileError(f"{p}:{n}: {fields[1][:20]!r} is no AS number") from None
            table.add(net, int(digits))
            if len(table) > MAX_PREFIXES:
                raise AsnFileError(f"{p}: more than {MAX_PREFIXES:,} prefixes")
        return table


__all__ = ["MAX_PREFIXES", "AsnFileError", "AsnTable"]
