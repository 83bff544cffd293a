"""Across the internet: the collector serves TLS from a private CA that probes pin, a
token never goes in clear text to another host, and what the collector says about
itself (``/metrics``, ``/readyz``) is not on the public listener.

Real processes: ``popwatch-collector certs init`` (openssl), ``popwatch-collector run``
with the certificate it made, ``popwatch-probe run`` against Knot, InfluxDB 1.6.7.
Everything is on loopback: the "other host" of the plain-http check is a documentation
address (192.0.2.0/24) that the probe refuses before it opens any socket.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import servers
from support.influx import InfluxDB
from support.need import need
from support.procs import COLLECTOR, PROBE, Collector, probe_env, register, stored, targets_file

from probe.config import load_config
from probe.configfile import ConfigError
from probe.healthcheck import health_url


@pytest.fixture(scope="module")
def knot() -> Iterator[servers.Knot]:
    with servers.Knot("knot-tls", "id-tls") as k:
        yield k.start()


def certs_init(directory: Path, *names: str, ca_dir: Path | None = None) -> str:
    """``popwatch-collector certs init`` for ``names``; its report (standard error)."""
    need("openssl")
    args = [COLLECTOR, "certs", "init", "--dir", str(directory)]
    args += ["--ca-dir", str(ca_dir)] if ca_dir else []
    for name in names:
        args += ["--name", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collector's certificate for 127.0.0.1, from a CA kept in its own directory."""
    root = tmp_path_factory.mktemp("certs")
    certs_init(root / "tls", "127.0.0.1", ca_dir=root / "ca")
    return root / "tls"


@pytest.fixture
def collector(influx: InfluxDB, certs: Path, tmp_path: Path) -> Collector:
    c = Collector(
        influx,
        tmp_path / "collector",
        "tls_" + tmp_path.name[-8:].replace("-", "_"),
        tls=(certs / "collector.crt", certs / "collector.key"),
    )
    c.start()
    return c


def run_probe(
    collector: Collector, tmp_path: Path, knot: servers.Knot, ca: Path, url: str = ""
) -> tuple[int, str]:
    """One `popwatch-probe run` shipping to ``collector`` with ``ca`` pinned, measuring
    ``knot`` until it has answered four queries (two runs of each of its two series) and
    a second more, for the batches to be sent; its exit code and standard error."""
    port, before = knot.port, knot.queries()
    token = register(tmp_path / "collector", {f"p-{tmp_path.name[-6:]}": "eu-central"})
    [tok] = token.values()
    env = probe_env(collector, tok, tmp_path / "probe", targets_file(tmp_path / "t.yaml", port, 2))
    env["POPWATCH_COLLECTOR_CA"] = str(ca)
    if url:
        env["POPWATCH_COLLECTOR_URL"] = url
    conf = tmp_path / "probe.yaml"
    conf.write_text("batch_s: 0.5\n")
    proc = subprocess.Popen(
        [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60  # not a fixed sleep: a loaded machine starts slowly
    while knot.queries() - before < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # batch_s 0.5: a batch is out, to be taken or refused
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_a_probe_pinned_to_the_collector_ca_ships_over_https(
    influx: InfluxDB, knot: servers.Knot, collector: Collector, certs: Path, tmp_path: Path
) -> None:
    """A probe with POPWATCH_COLLECTOR_CA set to the CA of `certs init` ships to
    https://127.0.0.1: its measurements of Knot are in InfluxDB."""
    code, err = run_probe(collector, tmp_path, knot, certs / "ca.crt")
    assert code == 0, err
    assert "CERTIFICATE_VERIFY_FAILED" not in err
    db = collector.env["POPWATCH_INFLUXDB_BUCKET"]
    deadline = time.monotonic() + 30
    while len(rows := stored(influx, db)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows) >= 4, err
    assert {r["region"] for r in rows} == {"eu-central"}


def test_a_probe_given_another_ca_refuses_and_keeps_its_batches(
    influx: InfluxDB, knot: servers.Knot, collector: Collector, tmp_path: Path
) -> None:
    """A probe pinned to another CA does not send its token to this collector: the
    handshake fails on the certificate, nothing reaches InfluxDB, and the batches stay
    in its spool for a collector it can trust."""
    other = tmp_path / "other"
    certs_init(other, "127.0.0.1")
    code, err = run_probe(collector, tmp_path, knot, other / "ca.crt")
    assert code == 0, err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert stored(influx, collector.env["POPWATCH_INFLUXDB_BUCKET"]) == []
    assert list((tmp_path / "probe" / "spool").glob("*.json.gz"))


def test_a_probe_checks_the_collector_name(
    influx: InfluxDB, knot: servers.Knot, collector: Collector, certs: Path, tmp_path: Path
) -> None:
    """The right CA but a name the certificate does not carry (localhost, where the
    certificate names 127.0.0.1 only) is refused too."""
    url = f"https://localhost:{collector.port}"
    code, err = run_probe(collector, tmp_path, knot, certs / "ca.crt", url)
    assert code == 0, err
    assert "CERTIFICATE_VERIFY_FAILED" in err and "localhost" in err
    assert stored(influx, collector.env["POPWATCH_INFLUXDB_BUCKET"]) == []


def test_plain_http_to_another_host_is_refused_at_start(tmp_path: Path) -> None:
    """`popwatch-probe run` with an http:// collector that is not on loopback stops at
    once with one line (exit 2) naming the variable and the way out; POPWATCH_INSECURE=1
    allows it, and loopback needs no such flag."""
    env = {
        **os.environ,
        "POPWATCH_COLLECTOR_URL": "http://192.0.2.10:8080",
        "POPWATCH_TOKEN": "pw1_0123456789abcdef_secret",
        "POPWATCH_DATA_DIR": str(tmp_path),
    }
    out = subprocess.run([PROBE, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("popwatch-probe: POPWATCH_COLLECTOR_URL: 'http://192.0.2.10:8080'")
    assert "clear text" in line and "POPWATCH_INSECURE=1" in line
    assert not (tmp_path / "spool").exists()  # it stopped before it set anything up
    base = {"POPWATCH_TOKEN": "x"}
    for url in ("http://collector:8080", "http://10.1.2.3:8080"):
        with pytest.raises(ConfigError, match="clear text"):
            load_config(None, env={**base, "POPWATCH_COLLECTOR_URL": url})
        cfg = load_config(
            None, env={**base, "POPWATCH_COLLECTOR_URL": url, "POPWATCH_INSECURE": "1"}
        )
        assert cfg.insecure
    for url in ("http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080"):
        assert load_config(None, env={**base, "POPWATCH_COLLECTOR_URL": url}).collector_url == url


def test_a_pinned_ca_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    """A CA file that is missing or not a certificate, or a CA with a plain http URL,
    is one line naming POPWATCH_COLLECTOR_CA."""
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    base = {"POPWATCH_TOKEN": "x", "POPWATCH_COLLECTOR_URL": "https://collector.example:8080"}
    cases = {
        str(tmp_path / "missing.crt"): "POPWATCH_COLLECTOR_CA: No such file or directory",
        str(not_pem): f"POPWATCH_COLLECTOR_CA: {not_pem} is not a PEM CA certificate",
    }
    for ca, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, env={**base, "POPWATCH_COLLECTOR_CA": ca})
    with pytest.raises(ConfigError, match=r"POPWATCH_COLLECTOR_CA: set, but .* plain http"):
        load_config(
            None,
            env={
                **base,
                "POPWATCH_COLLECTOR_URL": "http://127.0.0.1:1",
                "POPWATCH_COLLECTOR_CA": ca,
            },
        )


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_and_readyz_are_only_on_the_admin_listener(
    collector: Collector, certs: Path
) -> None:
    """The public https listener answers /healthz and nothing about the collector's
    insides (/metrics, /readyz: 404); the admin listener on loopback serves both."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    assert _get(f"{collector.url}/healthz", ctx) == 200
    assert _get(f"{collector.url}/metrics", ctx) == 404
    assert _get(f"{collector.url}/readyz", ctx) == 404
    assert _get(f"{collector.admin_url}/readyz") == 200
    with urllib.request.urlopen(f"{collector.admin_url}/metrics", timeout=5) as resp:
        assert "popwatch_collector_accepted_total" in resp.read().decode()


def test_the_health_check_asks_a_tls_collector_over_https(
    collector: Collector,
) -> None:
    """popwatch-healthcheck (the image's HEALTHCHECK) in a TLS collector's environment
    asks https://127.0.0.1:PORT/healthz and passes; the URL is http for a probe."""
    env = {k: v for k, v in collector.env.items() if k.startswith("POPWATCH_")}
    assert health_url(env) == f"https://127.0.0.1:{collector.port}/healthz"
    assert health_url({"POPWATCH_METRICS_LISTEN": "127.0.0.1:9553"}).startswith("http://")
    out = subprocess.run(
        [sys.executable, "-m", "probe.healthcheck"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_admin_listen_on_a_port_in_use_is_one_line(influx: InfluxDB, tmp_path: Path) -> None:
    """A taken admin port stops the start with one line naming admin_listen (exit 2)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        c = Collector(influx, tmp_path, "unused")
        c.env["POPWATCH_ADMIN_LISTEN"] = f"127.0.0.1:{taken.getsockname()[1]}"
        out = subprocess.run(
            [COLLECTOR, "run"], env=c.env, capture_output=True, text=True, timeout=30
        )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"popwatch-collector: admin_listen: cannot listen on "
        f"{c.env['POPWATCH_ADMIN_LISTEN']}: Address already in use"
    )


def test_certs_init_keeps_the_ca_and_reissues_only_when_needed(tmp_path: Path) -> None:
    """Run again, `certs init` keeps both files; with a new name it issues a new server
    certificate from the same CA (probes keep trusting it); a server certificate from
    another CA is replaced. Keys are readable by their owner only."""
    d = tmp_path / "tls"
    first = certs_init(d, "collector.example.net", "127.0.0.1")
    assert "made a private CA" in first and "issued the server certificate" in first
    ca, cert = (d / "ca.crt").read_bytes(), (d / "collector.crt").read_bytes()
    again = certs_init(d, "collector.example.net", "127.0.0.1")
    assert "kept the CA" in again and "kept the server certificate" in again
    assert (d / "collector.crt").read_bytes() == cert
    more = certs_init(d, "collector.example.net", "127.0.0.1", "203.0.113.7")
    assert "its names differ" in more
    assert (d / "ca.crt").read_bytes() == ca and (d / "collector.crt").read_bytes() != cert
    text = subprocess.run(
        ["openssl", "x509", "-in", str(d / "collector.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:collector.example.net" in text and "IP Address:203.0.113.7" in text
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "collector.crt", d / "collector.key")  # a matching pair
    for key in ("ca.key", "collector.key"):
        assert (d / key).stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other"
    certs_init(other, "x.example")
    (d / "collector.crt").write_bytes((other / "collector.crt").read_bytes())
    assert "not signed by this CA" in certs_init(d, "collector.example.net", "127.0.0.1")
    bad = subprocess.run(
        [COLLECTOR, "certs", "init", "--dir", str(d), "--name", "not a name"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "neither an IP address nor a DNS name" in bad.stderr
