"""Fixtures: real Knot, NSD, dnsdist and InfluxDB on loopback (see tests/support/servers.py).

Each starts its server on first use; without the server installed the tests that use it
are skipped, with the reason (under ``CI=true`` they fail): see tests/support/need.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from support import servers
from support.influx import InfluxDB
from support.procs import STARTED

from collector.ingest.registry import Registry
from probe import net
from probe.checks.dns import DnsJob
from probe.config import Target

# No server is needed to import this: a fixture that starts one skips (fails under CI)
# when it is not installed (support.need), so the pure tests run on any machine.
net.warm_up()

# Hypothesis' default deadline (200 ms an example) is a wall-clock tolerance a loaded
# machine breaks; how many examples run is what the tests choose
settings.register_profile("popwatch", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("popwatch")


#: the modules that hold what the whole machine shares: the lab's network namespaces and
#: devices (fixed names), the ping test's far host, podman's containers and images and the
#: ports the compose stack publishes (8080, 8081, 8086)
MACHINE_WIDE: frozenset[str] = frozenset(
    {
        "test_lab",
        "test_lab_asks",
        "test_lab_daemon",
        "test_lab_world",
        "test_ping_check",
        "test_containers",
        "test_deploy",
        "test_dashboards",
        "test_readme_quickstart",
    }
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """How the test command's two pytest-xdist workers share the suite: a module's tests
    stay on one worker, so its module fixtures (its InfluxDB, its servers) start once,
    and the MACHINE_WIDE modules are one unit, on one worker, one after another. (A
    scheduler rather than ``xdist_group`` marks: pytest 9.2 no longer lets xdist append
    the group to a test's id, so ``--dist loadgroup`` groups nothing; pytest-xdist
    issue 1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "machine" if Path(module).stem in MACHINE_WIDE else module

    return ByModule(config, log)


@pytest.fixture(scope="module")
def influx() -> Iterator[InfluxDB]:
    """A real InfluxDB 1.6.7 for a test module (a module may define its own instead)."""
    with InfluxDB() as i:
        yield i.start()


@pytest.fixture(autouse=True)
def _stop_collectors() -> Iterator[None]:
    """Every collector process a test started is stopped, even when the test fails;
    those a module-scoped fixture started before the test (set up first) are left."""
    before = len(STARTED)
    yield
    while len(STARTED) > before:
        STARTED.pop().stop()


@pytest.fixture(scope="session")
def knot() -> Iterator[servers.Knot]:
    with servers.Knot("knot-fra1", "knot-id-fra1") as k:
        yield k.start()


@pytest.fixture(scope="session")
def nsd() -> Iterator[servers.Nsd]:
    with servers.Nsd("nsd-ams1", "nsd-id-ams1") as n:
        yield n.start()


@pytest.fixture(scope="session")
def backend() -> Iterator[servers.Knot]:
    """A Knot of its own behind dnsdist, so its query count is dnsdist's traffic only."""
    with servers.Knot("knot-behind-dnsdist", "knot-id-behind") as k:
        yield k.start()


@pytest.fixture(scope="session")
def dnsdist(backend: servers.Knot) -> Iterator[servers.Dnsdist]:
    with servers.Dnsdist("dnsdist", "dnsdist") as d:
        yield d.start(backend.port)


def make_target(**kw: Any) -> Target:
    spec: dict[str, Any] = {
        "name": "t",
        "topology": "anycast",
        "server": "127.0.0.1",
        "queries": [{"qname": "example.test", "qtype": "SOA"}],
        "timeout": 1.0,
    }
    spec.update(kw)
    return msgspec.convert(spec, Target)


def make_job(
    address: str,
    transport: str = "udp",
    qname: str = "example.test.",
    qtype: str = "SOA",
    **kw: Any,
) -> DnsJob:
    kw.setdefault("server", address)
    kw.setdefault("queries", [{"qname": qname, "qtype": qtype}])
    return DnsJob(make_target(**kw), address, transport, qname, qtype)


@pytest.fixture
def job_for() -> Callable[..., DnsJob]:
    return make_job


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A probe registry of the test's own (the collector's SQLite)."""
    r = Registry(tmp_path / "registry.sqlite")
    yield r
    r.close()
