"""The probe's DNS wire format: the queries it sends, and a fast reader of the answers.

Parsing a whole answer with ``dns.message.from_wire`` costs about 210 µs on this machine,
most of a measurement's CPU budget. This walker reads only what the record needs (rcode
including the EDNS extended bits, TC, the answer count, the smallest answer TTL, the SOA
serial, the NSID option, the first TXT string) in about 2 µs, and refuses anything that is
not well formed.

The queries are built here too (once per series, then only the ID changes), so a running
probe does not import dnspython (2.4 MB of its resident memory): names made of letters,
digits, ``-``, ``_`` and ``*`` are read here; any other name (escapes, non-ASCII) goes to
dnspython's parser, imported then. ``tests/test_dnswire.py`` holds both halves to
dnspython: the reader against its reading of real answers, the writer byte for byte.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

TYPE_SOA: Final = 6
TYPE_TXT: Final = 16
TYPE_OPT: Final = 41
OPTION_NSID: Final = 3

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
#: dnspython's names of the rcodes (dns.rcode.to_text); 12-15 have none
_RCODE_NAMES: Final = dict(
    enumerate(
        [
            "NOERROR",
            "FORMERR",
            "SERVFAIL",
            "NXDOMAIN",
            "NOTIMP",
            "REFUSED",
            "YXDOMAIN",
            "YXRRSET",
            "NXRRSET",
            "NOTAUTH",
            "NOTZONE",
            "DSOTYPENI",
            "12",
            "13",
            "14",
            "15",
            "BADVERS",
            "BADKEY",
            "BADTIME",
            "BADMODE",
            "BADNAME",
            "BADALG",
            "BADTRUNC",
            "BADCOOKIE",
        ]
    )
)
#: the query types a target may ask (probe.targets.QTYPES), by code
QTYPE_CODES: Final = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "DNSKEY": 48,
    "HTTPS": 65,
    "CAA": 257,
}
CLASS_IN: Final = 1
CLASS_CH: Final = 3
#: a name this module reads itself: plain labels of at most 63 characters
_PLAIN_NAME: Final = re.compile(r"(?:[A-Za-z0-9_*-]{1,63}\.)*[A-Za-z0-9_*-]{1,63}\.?|\.")


def absolute_name(text: str) -> str:
    """``text`` as an absolute domain name in dnspython's text form (``example.com.``).

    Raises ValueError, saying why, for anything that is not a domain name.
    """
    if _PLAIN_NAME.fullmatch(text) and len(text.rstrip(".")) <= 253:
        return text if text.endswith(".") else text + "."
    import dns.exception
    import dns.name

    try:
        return dns.name.from_text(text).to_text()
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc)) from None


def name_wire(name: str) -> bytes:
    """The uncompressed wire form of an absolute name from :func:`absolute_name`."""
    if _PLAIN_NAME.fullmatch(name):
        labels = name.rstrip(".").split(".") if name != "." else []
        return b"".join(bytes((len(x),)) + x.encode("ascii") for x in labels if x) + b"\0"
    import dns.name

    return dns.name.from_text(name).to_wire() or b""


def query_wire(
    qname: str,
    qtype: int,
    qclass: int = CLASS_IN,
    *,
    rd: bool = False,
    edns: bool = False,
    bufsize: int = 1232,
    dnssec: bool = False,
    nsid: bool = False,
) -> bytes:
    """A query with ID 0, as dnspython's ``make_query`` writes it: the header (RD when
    ``rd``), one question, and an OPT record when ``edns`` (or ``dnssec``, which needs
    it) with the DO bit for ``dnssec`` and an empty NSID option for ``nsid``.

    ``dnssec`` without ``edns`` is what dnspython makes of it too: an OPT record with the
    default 1232-byte buffer, the DO bit and no options.
    """
    if dnssec and not edns:
        edns, bufsize, nsid = True, 1232, False
    header = _HEADER.pack(0, 0x0100 if rd else 0, 1, 0, 0, 1 if edns else 0)
    wire = header + name_wire(qname) + struct.pack("!HH", qtype, qclass)
    if edns:
        options = struct.pack("!HH", OPTION_NSID, 0) if nsid else b""
        ttl = 0x8000 if dnssec else 0  # extended rcode 0, version 0, flags: DO
        wire += b"\0" + _RR.pack(TYPE_OPT, bufsize, ttl, len(options)) + options
    return wire


class MalformedAnswer(ValueError):
    """The bytes are not a well-formed DNS message."""


@dataclass(slots=True)
class Answer:
    rcode: str
    truncated: bool
    answers: int  # RRs in the answer section
    ttl: int | None  # smallest TTL in the answer section
    serial: int | None  # serial of the first SOA in the answer section
    nsid: bytes | None  # the NSID option's payload, when the server sent one
    txt: bytes | None  # the first TXT record's strings, joined


def rcode_name(value: int) -> str:
    return _RCODE_NAMES.get(value) or str(value)


def _skip_name(d: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) name at ``i``."""
    n = len(d)
    while True:
        if i >= n:
            raise MalformedAnswer("name runs past the end")
        b = d[i]
        if b == 0:
            return i + 1
        if b & 0xC0 == 0xC0:
            if i + 2 > n:
                raise MalformedAnswer("compression pointer runs past the end")
            return i + 2
        if b & 0xC0:
            raise MalformedAnswer(f"unknown label type {b:#x}")
        i += 1 + b


def parse(d: bytes) -> Answer:
    """Read the fields a record needs; raise :class:`MalformedAnswer` on bad input."""
    if len(d) < 12:
        raise MalformedAnswer(f"{len(d)} bytes is shorter than a DNS header")
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(d)
    i = 12
    end = len(d)
    try:
        for _ in range(qd):
            i = _skip_name(d, i) + 4
        ttl: int | None = None
        serial: int | None = None
        txt: bytes | None = None
        nsid: bytes | None = None
        ext_rcode = 0
        for section, count in ((0, an), (1, ns), (2, ar)):
            for _ in range(count):
                i = _skip_name(d, i)
                rtype, _rclass, rttl, rdlen = _RR.unpack_from(d, i)
                i += 10
                rdata = i
                i += rdlen
                if i > end:
                    raise MalformedAnswer("record data runs past the end")
                if section == 0:
                    ttl = rttl if ttl is None or rttl < ttl else ttl
                    if rtype == TYPE_SOA and serial is None:
                        j = _skip_name(d, _skip_name(d, rdata))
                        if j + 4 > i:
                            raise MalformedAnswer("SOA record too short")
                        serial = struct.unpack_from("!I", d, j)[0]
                    elif rtype == TYPE_TXT and txt is None:
                        txt = _txt(d[rdata:i])
                elif section == 2 and rtype == TYPE_OPT:
                    ext_rcode = rttl >> 24
                    nsid = _option(d[rdata:i], OPTION_NSID)
    except struct.error:
        raise MalformedAnswer("message ends inside a record") from None
    if i > end:
        raise MalformedAnswer("question runs past the end")
    return Answer(
        rcode=rcode_name(ext_rcode << 4 | flags & 0x0F),
        truncated=bool(flags & 0x0200),
        answers=an,
        ttl=ttl,
        serial=serial,
        nsid=nsid,
        txt=txt,
    )


def _txt(rdata: bytes) -> bytes:
    out = bytearray()
    k = 0
    while k < len(rdata):
        n = rdata[k]
        out += rdata[k + 1 : k + 1 + n]
        k += 1 + n
    return bytes(out)


def _option(rdata: bytes, code: int) -> bytes | None:
    k = 0
    while k + 4 <= len(rdata):
        ocode, olen = struct.unpack_from("!HH", rdata, k)
        if ocode == code:
            return rdata[k + 4 : k + 4 + olen]
        k += 4 + olen
    return None
