"""``need(*tools)``: a test or fixture that needs a server or tool it cannot find is
skipped, with the reason and the package that brings it; under CI it fails instead.

The pure tests (the wire format, the DNS codec, the config) need none of them, so a
laptop without Knot, NSD, dnsdist or InfluxDB runs those and skips the rest:

    pytest tests/test_wire.py      # no server needed: runs anywhere
    pytest                         # "SKIPPED ... knotd is not installed: apt-get install knot"

``.ci/run`` installs every one of them and runs the tests with ``CI=true`` (as CI
services set it), so there a missing tool is a failure, never a quiet skip.

Outside pytest (a benchmark, ``python tests/support/servers.py knot`` by hand) a missing
tool raises :class:`NotInstalled` with the same message.
"""

from __future__ import annotations

import os
import shutil
import sys

#: the Debian package each tool comes from (.ci/run installs them all)
PACKAGES = {
    "knotd": "knot",
    "knotc": "knot",
    "kdig": "knot-dnsutils",
    "nsd": "nsd",
    "nsd-control": "nsd",
    "nsd-control-setup": "nsd",
    "dnsdist": "dnsdist",
    "openssl": "openssl",
    "influxd": "influxdb",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "tcpdump": "tcpdump",
    "ip": "iproute2",
    "dnsperf": "dnsperf",
    "mtr": "mtr-tiny",
    "chromium": "chromium",
    "podman": "podman",
    "docker-compose": "docker-compose",
}
#: tools that no Debian package brings
ELSEWHERE = {
    "kubectl": "it comes with the Google Cloud CLI's packages (kubectl has kustomize built in)",
}


class NotInstalled(RuntimeError):
    """A tool is missing, and no pytest test is running to skip."""


def in_ci() -> bool:
    """Whether the environment says CI (``CI=true`` or ``CI=1``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(*tools: str) -> list[str]:
    """The tools of ``tools`` that are not on PATH."""
    return [t for t in tools if shutil.which(t) is None]


def reason(*tools: str) -> str:
    """Why a test cannot run, and how to fix it: "knotd is not installed: apt-get install
    knot", one clause per package (the first missing tool of it named)."""
    first: dict[str, str] = {}  # package (or the way to get it): the first tool missing
    for t in tools:
        first.setdefault(ELSEWHERE.get(t) or f"apt-get install {PACKAGES.get(t, t)}", t)
    return "; ".join(f"{t} is not installed: {how}" for how, t in first.items())


def need(*tools: str) -> None:
    """Return if every tool is on PATH. Otherwise skip the running test (``pytest.skip``),
    or fail it (``pytest.fail``) under CI; outside pytest, raise :class:`NotInstalled`.

    Call it from a test or a fixture (a session fixture that skips skips every test that
    uses it, each with the reason), not at import: collecting a module never fails."""
    absent = missing(*tools)
    if not absent:
        return
    why = reason(*absent)
    if "pytest" not in sys.modules:  # a benchmark, or a server started by hand
        raise NotInstalled(why)
    import pytest

    if in_ci():
        pytest.fail(f"{why} (CI is set, so a missing server fails)", pytrace=False)
    pytest.skip(why)
