"""``popwatch-collector certs init``: a private CA and the collector's server certificate.

Probes across the internet pin this CA (``POPWATCH_COLLECTOR_CA``) and check the
collector's name against the certificate, so no public CA is needed and no other CA's
certificate is accepted. The files are made with the ``openssl`` command (present
wherever ``ca-certificates`` is), so the collector needs no crypto package of its own:

* ``CA_DIR/ca.key`` (0600), the CA's private key: keep it off the collector's hosts if
  you can (``--ca-dir``); it is needed again only to issue a new server certificate;
* ``DIR/ca.crt``, the CA certificate, for the probes (and ``CA_DIR/ca.crt``);
* ``DIR/collector.crt`` and ``DIR/collector.key`` (0600), for ``POPWATCH_TLS_CERT``
  and ``POPWATCH_TLS_KEY``.

It can run at every start (a container's init, say): an existing CA is never replaced,
since probes pin it; the server certificate is issued again only when it is missing,
was not signed by this CA, does not carry exactly the names asked for, expires within
30 days, or with ``--renew``. Keys are ECDSA P-256.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

#: a server certificate that expires within this many seconds is issued again
RENEW_BEFORE_S: Final = 30 * 86400
CA_DAYS: Final = 3650
#: 825 days: the longest validity some TLS clients accept for a server certificate
SERVER_DAYS: Final = 825

EXAMPLES = """\
examples:
  # on the collector's host: the names probes use to reach it
  popwatch-collector certs init --dir ./certs --name collector.example.net --name 203.0.113.7
  POPWATCH_TLS_CERT=./certs/collector.crt POPWATCH_TLS_KEY=./certs/collector.key \\
    popwatch-collector run
  # on each probe's host: copy certs/ca.crt there, and
  POPWATCH_COLLECTOR_URL=https://collector.example.net:8080 \\
    POPWATCH_COLLECTOR_CA=/etc/popwatch/ca.crt POPWATCH_TOKEN=pw1_... popwatch-probe run

Run it again with more --name flags to issue a server certificate for the new names
from the same CA: probes keep working, since they pin the CA, not the certificate.
"""


class CertError(Exception):
    """Why the certificates could not be made; one line."""


def _openssl(*args: str) -> str:
    try:
        out = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise CertError(
            "the openssl command is not installed (Debian: apt install openssl)"
        ) from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CertError(f"openssl {args[0]} failed: {last}")
    return out.stdout


def _san(name: str) -> str:
    """The subjectAltName entry of a name: ``IP:`` for an address, ``DNS:`` otherwise."""
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name.lower().rstrip('.')}"


def check_name(name: str) -> str:
    """``name`` if it is an IP address or a DNS name (``*.`` allowed first); else
    ``argparse.ArgumentTypeError``."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        zone = getattr(address, "scope_id", None)
        if zone:
            raise argparse.ArgumentTypeError(
                f"{name!r} has a zone (%{zone}): a certificate names an address "
                f"without one; use {name.partition('%')[0]}"
            )
        return str(address)
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    if len(name) <= 253 and re.fullmatch(rf"(\*\.)?{label}(\.{label})*\.?", name):
        return name.lower().rstrip(".")
    raise argparse.ArgumentTypeError(f"{name!r} is neither an IP address nor a DNS name")


#: a certificate expiring within this long is warned of, at start and in /readyz
EXPIRY_WARNING_S: Final = 14 * 86400


def expires_at(cert: Path) -> float:
    """When ``cert`` expires (epoch seconds), as openssl reads its notAfter."""
    text = _openssl("x509", "-in", str(cert), "-noout", "-enddate").strip()
    when = text.partition("=")[2]
    return datetime.strptime(when, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC).timestamp()


def expiry_warning(cert: Path, not_after: float, now: float) -> str | None:
    """A warning when ``cert`` has expired or expires within ``EXPIRY_WARNING_S``."""
    left = not_after - now
    if left >= EXPIRY_WARNING_S:
        return None
    if left <= 0:
        return (
            f"the collector's certificate {cert} expired {-left / 86400:.1f} days ago: probes "
            "refuse it; renew it (popwatch-collector certs init --renew)"
        )
    return (
        f"the collector's certificate {cert} expires in {left / 86400:.1f} days: renew it "
        "(popwatch-collector certs init --renew)"
    )


def default_names() -> list[str]:
    """This host's name, and loopback."""
    names = [socket.getfqdn() or socket.gethostname(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(check_name(n) for n in names if n))


def _config(names: list[str]) -> str:
    sans = ",".join(_san(n) for n in names)
    return textwrap.dedent(
        f"""\
        [req]
        distinguished_name = dn
        prompt = no
        [dn]
        CN = popwatch private CA
        [ca]
        basicConstraints = critical,CA:TRUE,pathlen:0
        keyUsage = critical,keyCertSign,cRLSign
        subjectKeyIdentifier = hash
        [server]
        basicConstraints = critical,CA:FALSE
        keyUsage = critical,digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = {sans}
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid
        """
    )


def _private(path: Path) -> None:
    path.chmod(0o600)


def _names_of(cert: Path) -> set[str]:
    """The subjectAltName entries of ``cert``, as ``_san`` writes them."""
    text = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    found = set()
    for kind, value in re.findall(r"(DNS|IP Address):([^,\s]+)", text):
        found.add(_san(value) if kind == "IP Address" else f"DNS:{value.lower()}")
    return found


def _why_reissue(cert: Path, ca: Path, names: list[str]) -> str | None:
    """Why the server certificate at ``cert`` must be issued again, or None."""
    if not cert.exists():
        return "none yet"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if verify.returncode != 0:
        return "not signed by this CA"
    if _names_of(cert) != {_san(n) for n in names}:
        return "its names differ from those asked for"
    expiring = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE_S)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if expiring.returncode != 0:
        return "it expires within 30 days"
    return None


def init(directory: Path, names: list[str], ca_dir: Path | None = None, renew: bool = False) -> str:
    """Make what is missing of the CA and the server certificate; a report of what was
    done, one line per file set. Raises ``CertError``."""
    if not names:
        raise CertError("no names: give --name for each name probes use to reach the collector")
    ca_dir = ca_dir or directory
    report = []
    for d in {directory, ca_dir}:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CertError(f"cannot make {d}: {exc.strerror or exc}") from None
    ca_key, ca_crt = ca_dir / "ca.key", ca_dir / "ca.crt"
    # new files are made next to where they go, then renamed into place: never half-written
    with (
        tempfile.TemporaryDirectory(dir=directory, prefix=".certs-") as tmp,
        tempfile.TemporaryDirectory(dir=ca_dir, prefix=".ca-") as ca_tmp,
    ):
        cfg = Path(tmp) / "openssl.cnf"
        cfg.write_text(_config(names))
        curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        if ca_key.exists() != ca_crt.exists():
            have = ca_key if ca_key.exists() else ca_crt
            raise CertError(f"{have} exists without its pair; move it away or restore the pair")
        if not ca_key.exists():
            key, crt = Path(ca_tmp) / "ca.key", Path(ca_tmp) / "ca.crt"
            _openssl(
                "req", "-x509", "-config", str(cfg), "-extensions", "ca", *curve,
                "-keyout", str(key), "-out", str(crt), "-days", str(CA_DAYS),
            )  # fmt: skip
            _private(key)
            os.replace(key, ca_key)
            os.replace(crt, ca_crt)
            report.append(f"made a private CA: {ca_crt} (its key: {ca_key})")
        else:
            report.append(f"kept the CA {ca_crt}: probes pin it")
        if ca_dir != directory:
            shutil.copyfile(ca_crt, Path(tmp) / "ca.crt")
            os.replace(Path(tmp) / "ca.crt", directory / "ca.crt")
        cert, key = directory / "collector.crt", directory / "collector.key"
        why = "--renew" if renew else _why_reissue(cert, ca_crt, names)
        if why is None:
            report.append(f"kept the server certificate {cert}: it is current")
            return "\n".join(report)
        new_key, csr, new_crt = (Path(tmp) / n for n in ("s.key", "s.csr", "s.crt"))
        cn = names[0] if len(names[0]) <= 64 else "popwatch collector"
        _openssl(
            "req", "-new", "-config", str(cfg), *curve, "-subj", f"/CN={cn}",
            "-keyout", str(new_key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(SERVER_DAYS),
            "-extfile", str(cfg), "-extensions", "server", "-out", str(new_crt),
        )  # fmt: skip
        _private(new_key)
        os.replace(new_key, key)  # the key first: a cert without its key would not load
        os.replace(new_crt, cert)
        report.append(
            f"issued the server certificate {cert} ({why}) for {', '.join(names)}; its key: {key}"
        )
    return "\n".join(report)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``certs`` command and its ``init`` action."""
    certs = sub.add_parser(
        "certs",
        help="make a private CA and the collector's TLS certificate",
        description="A private CA that probes pin, and the collector's server certificate.",
    )
    csub = certs.add_subparsers(dest="certs_cmd", required=True, metavar="ACTION")
    p = csub.add_parser(
        "init",
        help="make the CA and the server certificate (what is missing or stale)",
        description=textwrap.fill(
            "Make a private CA (unless one exists: probes pin it) and a server "
            "certificate for the collector signed by it, for the names probes use to reach "
            "the collector. Safe to run at every start: a current certificate is kept.",
            88,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        help="where ca.crt, collector.crt and collector.key go (default: DATA_DIR/certs, "
        "DATA_DIR being POPWATCH_DATA_DIR or /var/lib/popwatch)",
    )
    p.add_argument(
        "--ca-dir",
        metavar="DIR",
        type=Path,
        help="where the CA's key (ca.key) goes, if not DIR: keep it off the collector",
    )
    p.add_argument(
        "--name",
        action="append",
        type=check_name,
        metavar="NAME",
        help="a DNS name or IP address probes use to reach the collector; repeat for "
        "each (default: this host's name, localhost, 127.0.0.1)",
    )
    p.add_argument(
        "--renew", action="store_true", help="issue the server certificate again, even if current"
    )


def run(args: argparse.Namespace) -> int:
    """``certs init``: 0, or 1 with one line on standard error."""
    directory = args.dir or Path(os.environ.get("POPWATCH_DATA_DIR") or "/var/lib/popwatch") / (
        "certs"
    )
    names = list(dict.fromkeys(args.name or default_names()))
    try:
        report = init(directory, names, args.ca_dir, args.renew)
    except CertError as exc:
        print(f"popwatch-collector certs init: {exc}", file=sys.stderr)
        return 1
    print(report, file=sys.stderr)
    ca = directory / "ca.crt"
    host = f"[{names[0]}]" if ":" in names[0] else names[0]
    print(
        f"collector: POPWATCH_TLS_CERT={directory / 'collector.crt'} "
        f"POPWATCH_TLS_KEY={directory / 'collector.key'}\n"
        f"probes:    POPWATCH_COLLECTOR_CA={ca} (a copy of it on each probe's host) and "
        f"POPWATCH_COLLECTOR_URL=https://{host}:8080",
        file=sys.stderr,
    )
    return 0


__all__ = ["CertError", "add_parser", "check_name", "default_names", "init", "run"]
