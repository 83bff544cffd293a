"""The image, built and run in real containers (podman; no Docker engine runs here).

No registry image can be pulled here, so the image is built on a base made locally with
``deploy/base-image.sh`` (Debian bookworm from the mirror apt uses, Python 3.11), the
same way a user without registry access would build it; the Dockerfile's default base is
the official ``python:3.11-slim-bookworm``. Containers use the host's network, so the
real Knot, InfluxDB and collector these tests start on loopback are reachable.

The compose stack (docker-compose.yml) runs under ``docker-compose`` 1.29 driving podman
through ``podman system service``, with ``tests/data/compose/docker-compose.test.yml``
naming the images that stand in where the real ones cannot be had here:

* Debian's InfluxDB 1.6.7 stands in for ``influxdb:2.7.12`` (no registry image can be
  pulled, and no InfluxDB 2.x package exists here). The collector finds the v1 API from
  ``/ping``; the 2.x setup (``DOCKER_INFLUXDB_INIT_*``, the DBRP script) is not run.
* Grafana and Alertmanager are left out: their images cannot be pulled either, and
  nothing the test checks goes through them (the dashboards and the alert engine have
  their own tests). The collector's alert engine runs and finds no Alertmanager.
* Knot, in a container of its own, is the measured server instead of the internet.

No systemd runs here, so podman runs no health check by itself: while compose waits for
``service_healthy``, the test runs ``podman healthcheck run`` on the project's containers,
as a scheduler would. The stack publishes its ports as the real one does (8080, and
8081 and 8086 on loopback), so those ports must be free on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import servers
from support.influx import InfluxDB
from support.need import need
from support.paths import Paths

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
    need("podman")
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


@pytest.fixture(scope="module")
def paths() -> Iterator[Paths]:
    """tests/support/paths.py's routers, for a container to trace through."""
    with Paths() as p:
        yield p


@pytest.mark.parametrize("method", ["udp", "icmp", "tcp"])
def test_the_probe_traces_through_routers_unprivileged(
    image: str, paths: Paths, method: str
) -> None:
    """A probe in a container, uid 10001, every capability dropped, in the network
    namespace of tests/support/paths.py's source, traces its four hops to dst: the
    routers' addresses, the end of the path, kernel stamps (tcp: a SYN has none, and the
    record says so)."""
    out = podman(
        "run",
        "--rm",
        f"--network=ns:/run/netns/{paths.ns('src')}",
        # as docker-compose.yml runs the probe (podman's own default is "0 0")
        "--sysctl=net.ipv4.ping_group_range=0 2147483647",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        image,
        "sh",
        "-c",
        f"id -u; popwatch-probe once --trace {method} {paths.dst_v4} --hop-timeout 0.5 --json",
    ).stdout
    uid, *lines = out.splitlines()
    assert uid == "10001", out
    r = json.loads(lines[-1])
    hops = [h.get("addr") for h in r["hops"]]
    assert r["reached"] is True and len(hops) == 4, r
    assert hops[0] == paths.v4(1, "r1") and hops[3] == paths.dst_v4, hops
    assert hops[1] in {paths.v4(2, "ra"), paths.v4(3, "rb")}, hops
    assert r["timestamping"] == ("user" if method == "tcp" else "kernel"), r


def test_sigterm_drains_and_exits_within_the_grace_period(
    image: str, knot: servers.Knot, tmp_path: Path
) -> None:
    """`podman stop` (SIGTERM, then SIGKILL after 10 s) ends a running probe cleanly: exit
    0, so before the grace period ran out (SIGKILL would be 137), its in-flight
    measurements finished and written. How long `podman stop` itself takes (its cleanup
    included) is not asserted: that is podman's time, and a loaded machine's."""
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
        deadline = time.monotonic() + 60  # measuring: two records out (not a fixed sleep)
        while time.monotonic() < deadline:
            out = podman("logs", name).stdout.splitlines()
            if sum(line.startswith("{") for line in out) >= 2:
                break
            time.sleep(0.5)
        podman("stop", "--time=10", name, timeout=60)
        code = podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip()
        logs = podman("logs", name)
    finally:
        podman("rm", "--force", "--volumes", name, check=False)
    assert code == "0", logs.stderr
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
            podman("rm", "--force", "--volumes", name, check=False)
    assert health.returncode == 0, (health.stdout, health.stderr)
    assert code == "0"


# --------------------------------------------------------------------------- the stack

COMPOSE_DATA = REPO / "tests" / "data" / "compose"
PROJECT = "popwatchtest"


@pytest.fixture(scope="module")
def stand_ins(image: str) -> None:
    """The stand-in images of the compose test, built on the local base: Debian's
    InfluxDB 1.6.7, and Knot as the measured server."""
    for name in ("influxdb", "knot"):
        podman(
            "build",
            "--format=docker",
            f"--build-arg=BASE={BASE}",
            f"--file={COMPOSE_DATA / f'{name}.Dockerfile'}",
            f"--tag=localhost/popwatch-test-{name}:bookworm",
            str(COMPOSE_DATA),
            timeout=900,
        )


class Stack:
    """docker-compose on podman: the repository's docker-compose.yml with the test's
    override, a fresh .env from deploy/env.py, and health checks run while it waits."""

    def __init__(self, workdir: Path) -> None:
        self.sock_dir = Path(tempfile.mkdtemp(prefix="pw-podman-"))  # a short socket path
        self.env_file = workdir / ".env"
        env_text = subprocess.run(
            [sys.executable, str(REPO / "deploy" / "env.py")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.env_file.write_text(  # this host's name may be anything: a name of our own
            "".join(
                "COLLECTOR_PUBLIC_NAME=collector.test\n"
                if line.startswith("COLLECTOR_PUBLIC_NAME=")
                else line
                for line in env_text.splitlines(keepends=True)
            )
        )
        self.service: subprocess.Popen[bytes] | None = None
        self.stop_pump = threading.Event()

    def start_service(self) -> None:
        sock = self.sock_dir / "podman.sock"
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        self.docker_host = f"unix://{sock}"

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [
            "docker-compose",
            f"--project-name={PROJECT}",
            f"--file={REPO / 'docker-compose.yml'}",
            f"--file={COMPOSE_DATA / 'docker-compose.test.yml'}",
            f"--env-file={self.env_file}",
            *args,
        ]
        env = {**os.environ, "DOCKER_HOST": self.docker_host, "COMPOSE_HTTP_TIMEOUT": "300"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def containers(self, *, all_: bool = False) -> list[str]:
        args = ["ps", f"--filter=label=com.docker.compose.project={PROJECT}"]
        out = podman(*args, *(["--all"] if all_ else []), "--format={{.Names}}").stdout
        return out.split()

    def volumes(self) -> list[str]:
        out = podman("volume", "ls", "--format={{.Name}}").stdout.split()
        return [v for v in out if v.startswith(f"{PROJECT}_")]

    def _pump(self) -> None:
        """Run the health checks of the running containers, as systemd's timers would."""
        while not self.stop_pump.wait(1.0):
            for name in self.containers():
                podman("healthcheck", "run", name, check=False, timeout=30)

    def up(self, *services: str) -> subprocess.CompletedProcess[str]:
        """`docker-compose up -d --no-build SERVICES`, health checks run meanwhile."""
        self.stop_pump.clear()
        pump = threading.Thread(target=self._pump, daemon=True)
        pump.start()
        try:
            return self.compose("up", "--detach", "--no-build", *services, timeout=600)
        finally:
            self.stop_pump.set()
            pump.join(60)

    def close(self) -> None:
        try:
            self.compose("down", "--volumes", "--timeout=10")
        finally:
            if self.service is not None:
                self.service.terminate()
                self.service.wait(30)
            shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture
def stack(stand_ins: None, tmp_path: Path) -> Iterator[Stack]:
    need("docker-compose")
    s = Stack(tmp_path)
    s.start_service()
    s.compose("down", "--volumes", "--timeout=5")  # what a failed run may have left
    try:
        yield s
    finally:
        s.close()


def influx_rows(q: str) -> list[list[Any]]:
    """The rows of an InfluxQL query to the stack's InfluxDB, on its published port."""
    url = "http://127.0.0.1:8086/query?" + urllib.parse.urlencode({"db": "popwatch", "q": q})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.load(resp)["results"][0]
    except OSError:
        return []
    return [row for series in result.get("series", []) for row in series["values"]]


def wait_rows(q: str, n: int, within: float) -> list[list[Any]]:
    deadline = time.monotonic() + within
    rows = influx_rows(q)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(1)
        rows = influx_rows(q)
    return rows


def readme_curl() -> str:
    """The `curl` of the README's quick start, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Quick start (the whole stack)\n") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = blocks[1].replace("\\\n", " ").splitlines()
    return next(line for line in lines if line.startswith("curl "))


def http_status(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_compose_stack_delivers_measurements_and_leaves_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """`docker-compose up -d probe-eu` brings up InfluxDB (1.6.7 standing in for 2.7),
    Knot, the `init` service, the collector (TLS, alerts on) and a probe: the probe's
    measurements of Knot, with the site from NSID and kernel timestamps, reach InfluxDB
    through the collector over https with the private CA pinned. The collector's
    certificate serves the names it was made for; /metrics is on the admin port only.
    With the tokens volume lost, the next `up` re-issues the token and the probe ships
    again. `docker-compose down -v` leaves no container, volume or network behind."""
    up = stack.up("probe-eu")
    assert up.returncode == 0, up.stderr
    init = podman("inspect", "--format={{.State.ExitCode}}", f"{PROJECT}_init_1").stdout
    assert init.strip() == "0"
    q = (
        "SELECT rtt_ms, probe, region, site, timestamping, transport FROM dns "
        "WHERE target = 'knot-compose'"
    )
    rows = wait_rows(q, 5, 90)
    logs = podman("logs", f"{PROJECT}_probe-eu_1", check=False).stderr
    assert len(rows) >= 5, logs
    for _, rtt, probe, region, site, stamping, transport in rows:
        assert (probe, region, site, stamping, transport) == (
            "probe-eu",
            "eu-west",
            "knot-compose",
            "kernel",
            "udp",
        )
        assert rtt > 0

    # the README's own check, as written, next to the .env it reads the token from
    curl = readme_curl()
    out = subprocess.run(
        ["bash", "-c", curl], cwd=stack.env_file.parent, capture_output=True, text=True
    )
    assert '"eu-west"' in out.stdout and '"knot-compose"' in out.stdout, (curl, out)

    ca = tmp_path / "ca.crt"
    podman("cp", f"{PROJECT}_collector_1:/run/popwatch/certs/ca.crt", str(ca))
    pinned = ssl.create_default_context(cafile=str(ca))
    assert http_status("https://localhost:8080/healthz", pinned) == 200
    assert http_status("https://localhost:8080/metrics", pinned) == 404
    assert http_status("http://127.0.0.1:8081/metrics") == 200
    assert http_status("http://127.0.0.1:8081/readyz") == 200

    # a lost tokens volume: the next start re-issues the token instead of failing
    down = stack.compose("down", "--timeout=10")
    assert down.returncode == 0, down.stderr
    podman("volume", "rm", f"{PROJECT}_tokens")
    before = len(influx_rows(q))
    up = stack.up("probe-eu")
    assert up.returncode == 0, up.stderr
    init_logs = podman("logs", f"{PROJECT}_init_1").stderr
    assert "init: probe probe-eu (eu-west) has a new token" in init_logs
    assert len(wait_rows(q, before + 3, 90)) >= before + 3

    down = stack.compose("down", "--volumes", "--timeout=10")
    assert down.returncode == 0, down.stderr
    assert stack.containers(all_=True) == []
    assert stack.volumes() == []
    networks = podman("network", "ls", "--format={{.Name}}").stdout.split()
    assert f"{PROJECT}_default" not in networks
