"""The image, built and run in real containers (podman; no Docker engine runs here).

No registry image can be pulled here, so the image is built on a base made locally with
``deploy/base-image.sh`` (Debian bookworm from the mirror apt uses, Python 3.11), the
same way a user without registry access would build it; the Dockerfile's default base is
the official ``python:3.11-slim-bookworm``. Containers use the host's network, so the
real Knot, InfluxDB and collector these tests start on loopback are reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import servers
from influx import InfluxDB

REPO = Path(__file__).parent.parent
BASE = "localhost/popwatch-base:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="podman here runs as root")


def podman(
    *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@pytest.fixture(scope="module")
def image() -> str:
    """The popwatch image, built from the repository on the local base."""
    assert shutil.which("podman"), "podman is missing: .ci/run installs it"
    if podman("image", "exists", BASE, check=False).returncode != 0:
        subprocess.run([str(REPO / "deploy" / "base-image.sh"), BASE], check=True, timeout=900)
    tag = "localhost/popwatch:test"
    build = [
        "build",
        "--format=docker",  # OCI images drop HEALTHCHECK
        f"--build-arg=BASE={BASE}",
        f"--build-arg=PIP_CERT={CA_BUNDLE}",
        f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro",
        f"--tag={tag}",
        str(REPO),
    ]
    podman(*build, timeout=900)
    return tag


@pytest.fixture(scope="module")
def knot() -> Iterator[servers.Knot]:
    with servers.Knot("knot-ctr", "id-ctr") as k:
        yield k.start()


def _name() -> str:
    return f"popwatch-test-{uuid.uuid4().hex[:8]}"


def test_the_image_runs_as_a_user_not_root(image: str) -> None:
    """The image's user is popwatch (uid 10001), not root, and the tools are on PATH."""
    out = podman("run", "--rm", image, "sh", "-c", "id -u; popwatch-probe --version").stdout
    uid = out.split()[0]
    assert uid == "10001"
    assert "popwatch-probe" in out


def test_the_probe_gets_kernel_timestamps_unprivileged(image: str, knot: servers.Knot) -> None:
    """A probe in a container with every capability dropped, as uid 10001, measures a real
    Knot with `timestamping: kernel` (SO_TIMESTAMPING needs no privilege)."""
    out = podman(
        "run",
        "--rm",
        "--network=host",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        image,
        "popwatch-probe",
        "once",
        "--server",
        f"127.0.0.1:{knot.port}",
        "--qname",
        "example.test",
        "--nsid",
        "--count",
        "3",
        "--interval",
        "0.2",
        "--json",
    ).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["rcode"] == "NOERROR"
        assert r["timestamping"] == "kernel"
        assert r["site"] == "knot-ctr"


def test_sigterm_drains_and_exits_within_the_grace_period(
    image: str, knot: servers.Knot, tmp_path: Path
) -> None:
    """`podman stop` (SIGTERM, then SIGKILL after 10 s) ends a running probe cleanly: exit
    0 well within the grace period, its in-flight measurements finished and written."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"targets:\n  - {{name: k, topology: unicast, server: 127.0.0.1, port: {knot.port}, "
        "interval: 1, timeout: 0.5, queries: [{qname: example.test}]}\n"
    )
    targets.chmod(0o644)
    name = _name()
    podman(
        "run",
        "--detach",
        f"--name={name}",
        "--network=host",
        "--cap-drop=all",
        f"--volume={targets}:/etc/popwatch/targets.yaml:ro",
        "--env=POPWATCH_TARGETS=/etc/popwatch/targets.yaml",
        image,
        "popwatch-probe",
        "run",
    )
    try:
        time.sleep(3)
        t0 = time.monotonic()
        podman("stop", "--time=10", name, timeout=30)
        took = time.monotonic() - t0
        code = podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip()
        logs = podman("logs", name)
    finally:
        podman("rm", "--force", name, check=False)
    assert code == "0", logs.stderr
    assert took < 8, took
    records = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
    assert len(records) >= 2
    assert all(r["rcode"] == "NOERROR" and r["timestamping"] == "kernel" for r in records)
    assert "stopped after" in logs.stderr


def test_the_collector_health_check_passes(image: str, tmp_path: Path) -> None:
    """The image's HEALTHCHECK (popwatch-healthcheck, /healthz) reports a running
    collector healthy. No systemd runs here, so the check is run by hand, as
    `podman healthcheck run` does for a scheduler."""
    port = servers.free_port()
    name = _name()
    with InfluxDB() as influx:
        influx.start()
        podman(
            "run",
            "--detach",
            f"--name={name}",
            "--network=host",
            f"--env=POPWATCH_LISTEN=127.0.0.1:{port}",
            f"--env=POPWATCH_INFLUXDB_URL={influx.url}",
            image,
            "popwatch-collector",
            "run",
        )
        try:
            servers.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
            health = podman("healthcheck", "run", name, check=False)
            podman("stop", "--time=10", name, timeout=30)
            code = podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip()
        finally:
            podman("rm", "--force", name, check=False)
    assert health.returncode == 0, (health.stdout, health.stderr)
    assert code == "0"
