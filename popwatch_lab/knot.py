"""Knot DNS (Debian's ``knot``) configured for one zone, with its own NSID and id.server.

Shared by the lab's sites and by the tests' loopback servers (``tests/support/servers.py``).
mod-stats counts requests per protocol, so a caller can ask how many queries the
server answered (``knotc stats``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def config(
    rundir: Path,
    listen: list[str],
    identity: str,
    nsid: str,
    zone: str,
    zone_file: str,
) -> str:
    """knot.conf: ``listen`` entries are ``ADDRESS@PORT``; the zone file is in ``rundir``."""
    return f"""
server:
    rundir: "{rundir}"
    listen: [ {", ".join(listen)} ]
    identity: "{identity}"
    nsid: "{nsid}"
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{rundir}"
log:
  - target: stderr
    any: warning
mod-stats:
  - id: counts
    request-protocol: on
    server-operation: off
    request-bytes: off
    response-bytes: off
    edns-presence: off
    flag-presence: off
    response-code: off
    reply-nodata: off
    query-type: off
    query-size: off
    reply-size: off
template:
  - id: default
    storage: "{rundir}"
    global-module: mod-stats/counts
    semantic-checks: off
zone:
  - domain: {zone}
    file: {zone_file}
control:
    listen: "{rundir}/knot.sock"
"""


def knotc(rundir: Path, *args: str) -> str:
    """``knotc`` on the server whose rundir is ``rundir``; its output."""
    return subprocess.run(
        ["knotc", "-s", str(rundir / "knot.sock"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def queries(rundir: Path) -> int:
    """Requests Knot has received, over every protocol (mod-stats request-protocol)."""
    out = knotc(rundir, "stats", "mod-stats")
    return sum(int(n) for n in re.findall(r"request-protocol\[[^\]]+\] = (\d+)", out))
