#!/usr/bin/env python3
"""Write the stack's ``.env`` (docker-compose.yml reads it): fresh secrets, this host's name.

    python3 deploy/env.py --out .env          # once, before the first `docker compose up`
    python3 deploy/env.py --example > .env.example

``.env`` holds the secrets the stack shares: the InfluxDB token (the collector writes
with it, Grafana reads with it), InfluxDB's and Grafana's admin passwords, and the name
remote probes use to reach the collector (it goes into the collector's certificate).
``--out FILE`` writes it readable by its owner alone (0600), and refuses a file that
exists: its secrets may be the ones InfluxDB already took. Printed to a regular file
(``> .env``) it is made 0600 too.
``--example`` prints the same keys with no values: ``.env.example`` holds no secret,
and docker compose refuses to start with it as it is. Standard library only, so it runs
before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import stat
import sys
import textwrap

#: (key, meaning, how a value is made); the order of the file
KEYS = (
    (
        "INFLUXDB_TOKEN",
        "InfluxDB's operator token, set at its first start: the collector writes with it "
        "and Grafana reads with it",
        lambda: secrets.token_urlsafe(48),
    ),
    (
        "INFLUXDB_ADMIN_PASSWORD",
        "the password of InfluxDB's user `admin` (its UI: http://127.0.0.1:8086)",
        lambda: secrets.token_urlsafe(24),
    ),
    (
        "GRAFANA_ADMIN_PASSWORD",
        "the password of Grafana's user `admin` (http://127.0.0.1:3000)",
        lambda: secrets.token_urlsafe(24),
    ),
    (
        "COLLECTOR_PUBLIC_NAME",
        "the DNS name (or IP address) remote probes use to reach this collector; it goes "
        "into the collector's TLS certificate",
        lambda: host_name(),
    ),
)


def host_name() -> str:
    """This host's DNS name, if it is one a certificate can carry; else localhost (edit
    it: the collector's certificate needs the name remote probes use)."""
    name = socket.getfqdn().lower().rstrip(".")
    label = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
    return name if re.fullmatch(rf"{label}(\.{label})*", name) else "localhost"


HEADER = """\
# The stack's settings and secrets, read by docker compose (docker-compose.yml).
# Made by `python3 deploy/env.py --out .env` (mode 0600); keep it out of version control.
# InfluxDB takes INFLUXDB_TOKEN and INFLUXDB_ADMIN_PASSWORD at its first start only:
# to change them later, change them in InfluxDB too (or `docker compose down -v`).
"""


def render(example: bool) -> str:
    lines = [HEADER]
    for key, meaning, make in KEYS:
        comment = textwrap.fill(meaning, 86, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"\n{comment}\n{key}={'' if example else make()}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="deploy/env.py", description="Print a .env for docker-compose.yml."
    )
    p.add_argument("--example", action="store_true", help="the keys without values (.env.example)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write FILE (mode 0600; refused if it exists) instead of printing",
    )
    args = p.parse_args(argv)
    text = render(args.example)
    if args.out:
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            print(
                f"deploy/env.py: {args.out} exists: InfluxDB may hold its secrets already "
                "(it takes them at its first start); remove it to make new ones",
                file=sys.stderr,
            )
            return 2
        except OSError as exc:
            print(f"deploy/env.py: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(text)
        return 0
    if not args.example:  # `> .env`: secrets, for the owner alone
        try:
            if stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode):
                os.fchmod(sys.stdout.fileno(), 0o600)
        except (OSError, ValueError):  # not a file we own, or no file descriptor
            pass
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
