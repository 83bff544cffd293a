"""The one error vocabulary of the probe.

Library and OS exceptions become a closed set of outcomes here and nowhere else:

* ``rcode`` is a DNS rcode name (``NOERROR``, ``NXDOMAIN``, ...) when an answer came, or
  one of :data:`NO_ANSWER_RCODES` when none did;
* ``error`` is ``"<kind>: <detail>"`` with ``kind`` from :data:`ERROR_KINDS`, so
  dashboards can group by the part before the colon and people can read the rest.
"""

from __future__ import annotations

import errno
import os
import ssl
from typing import Final

import h2.exceptions
import h11

TIMEOUT: Final = "TIMEOUT"
NETERR: Final = "NETERR"
NO_ANSWER_RCODES: Final = frozenset({TIMEOUT, NETERR})

#: every ``kind`` an ``error`` string may start with
ERROR_KINDS: Final = frozenset(
    {
        "timeout",  # no answer within the deadline
        "refused",  # ICMP port unreachable (UDP) or RST on connect (TCP)
        "unreachable",  # no route, host or network unreachable
        "reset",  # the connection was reset after it was open
        "closed",  # the peer closed the connection before a whole answer came
        "tls",  # TLS handshake or certificate failure
        "http",  # DoH: a status other than 200, or framing that is not valid HTTP/1.1 or HTTP/2
        "malformed",  # an answer came but it is not a DNS message for our query
        "resolve",  # a server host name could not be resolved
        "forbidden",  # the OS refused the socket itself (ICMP: net.ipv4.ping_group_range)
        "oserror",  # any other socket error, with its errno name
    }
)


MAX_DETAIL: Final = 200


def _short(detail: str) -> str:
    """One line of at most MAX_DETAIL characters: details quote servers, which can ramble."""
    detail = " ".join(detail.split())
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…"


#: every ``kind`` an http record's ``error`` may start with: the phase that failed
HTTP_ERROR_KINDS: Final = frozenset(
    {
        "dns",  # the host name did not resolve (or the resolver timed out)
        "connect",  # TCP connect refused, unreachable or timed out
        "tls",  # TLS handshake or certificate failure
        "timeout",  # the server took too long to answer or to send the body
        "status",  # an HTTP status outside the expected ones
        "body",  # the body did not match the expected regex, or was cut short
        "http",  # not a valid HTTP response, or too many redirects
    }
)


class _KindError(Exception):
    """An error whose ``error`` text is ``"<kind>: <detail>"``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = _short(detail)
        super().__init__(self.error)

    @property
    def error(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


class HttpCheckError(_KindError):
    """An HTTP fetch that failed; ``error`` is ``"<phase>: <detail>"``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        assert kind in HTTP_ERROR_KINDS, kind
        super().__init__(kind, detail)


def classify_http(exc: BaseException, phase: str) -> HttpCheckError:
    """Map an exception raised during phase ``phase`` of an HTTP fetch."""
    if isinstance(exc, HttpCheckError):
        return exc
    if isinstance(exc, TimeoutError):
        kind = phase if phase in ("dns", "connect", "tls") else "timeout"
        return HttpCheckError(kind, f"{phase} timed out")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HttpCheckError("tls", f"certificate: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return HttpCheckError("tls", str(exc.reason or exc))
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        kind = phase if phase in ("dns", "connect", "tls") else "http"
        return HttpCheckError(kind, f"{name} {exc.strerror or ''}".rstrip())
    kind = phase if phase in HTTP_ERROR_KINDS else "http"
    return HttpCheckError(kind, f"{type(exc).__name__}: {exc}".rstrip(": "))


class CheckError(_KindError):
    """A measurement that ended without a DNS answer (or with an unusable one)."""

    def __init__(self, rcode: str, kind: str, detail: str = "") -> None:
        assert rcode in NO_ANSWER_RCODES, rcode
        assert kind in ERROR_KINDS, kind
        self.rcode = rcode
        super().__init__(kind, detail)


_ERRNO_KIND: Final = {
    errno.ECONNREFUSED: "refused",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EADDRNOTAVAIL: "unreachable",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
}


def classify(exc: BaseException, phase: str = "") -> CheckError:
    """Map any exception raised while measuring to a :class:`CheckError`.

    ``phase`` (``connect``, ``tls``, ``query``) is named in the detail so that a reader
    knows how far the measurement got.
    """
    where = f"{phase}: " if phase else ""
    if isinstance(exc, CheckError):
        return exc
    if isinstance(exc, TimeoutError):
        return CheckError(TIMEOUT, "timeout", f"{phase or 'answer'} timed out")
    # the kind already says "tls": naming the tls phase again would read "tls: tls: ..."
    tls_where = "" if phase == "tls" else where
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CheckError(NETERR, "tls", f"{tls_where}certificate: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return CheckError(NETERR, "tls", f"{tls_where}{exc.reason or exc}")
    if isinstance(exc, EOFError):
        return CheckError(NETERR, "closed", f"{where}connection closed by peer")
    if isinstance(exc, h11.ProtocolError | h2.exceptions.ProtocolError):
        # DoH framing that h11 (HTTP/1.1) or h2 (HTTP/2) refused: a bad Content-Length,
        # garbage for a status line, invalid frames or header blocks, a second request on
        # a connection the server said it would close
        return CheckError(NETERR, "http", f"{where}{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError) and exc.errno is not None:
        kind = _ERRNO_KIND.get(exc.errno, "oserror")
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return CheckError(NETERR, kind, f"{where}{name} {exc.strerror or ''}".rstrip())
    return CheckError(NETERR, "oserror", f"{where}{type(exc).__name__}: {exc}")


#: who may open ICMP echo ("ping") sockets, IPv4 and IPv6 alike: "LOW HIGH" group ids
PING_GROUP_RANGE: Final = "/proc/sys/net/ipv4/ping_group_range"


def classify_icmp_socket(exc: OSError, phase: str = "") -> CheckError:
    """``socket(AF_INET[6], SOCK_DGRAM, IPPROTO_ICMP[V6])`` failed: say why, and for whom.

    Linux gives a process ping sockets only when its group (or a supplementary one) lies
    in ``net.ipv4.ping_group_range``, for IPv6 too; otherwise EACCES. "1 0", the kernel's
    default, forbids them to everyone, root included. No raw-socket fallback is tried.
    """
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return classify(exc, phase)
    try:
        with open(PING_GROUP_RANGE, encoding="ascii") as f:
            allowed = " ".join(f.read().split())
    except OSError:
        allowed = "unreadable"
    return CheckError(
        NETERR,
        "forbidden",
        f"ICMP sockets not allowed for gid {os.getegid()}: "
        f"net.ipv4.ping_group_range is '{allowed}'",
    )
