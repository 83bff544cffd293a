"""A new user's first run of the collector: no traceback, no silent misconfiguration.

Real processes throughout: ``popwatch-collector`` against Debian's InfluxDB 1.6.7. A
setting that cannot work stops the start with one line naming the path, the port, the
key or the variable (exit status 2); a setting that can is put to use. Where a case is
about a non-root user, the command runs as ``nobody`` (``setpriv``), with only the
capability to read and search directories so that it can reach the test environment's
Python under ``/root``: it still cannot create anything where ``nobody`` may not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import servers, v2shim
from support.influx import InfluxDB
from support.procs import AS_NOBODY, COLLECTOR, STARTED, Collector, register, wait_stored

from collector.cli import build_parser

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")


def _fails(*args: str, env: dict[str, str] | None = None, as_nobody: bool = False) -> str:
    """Run ``popwatch-collector ARGS`` to its end: it must exit 2 with exactly one line.

    The timeout is for a collector that does not stop (as before these checks): it
    would serve, so the test fails on the timeout."""
    cmd = [*AS_NOBODY, COLLECTOR, *args] if as_nobody else [COLLECTOR, *args]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=20, cwd="/", check=False
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    return lines[0]


def _collector(influx: InfluxDB, data: Path, db: str, **env: str) -> Collector:
    """A collector's settings: the InfluxDB API is left to ``auto`` unless ``env`` sets it."""
    c = Collector(influx, data, db)
    del c.env["POPWATCH_INFLUXDB_API"]
    c.env.update(env)
    return c


def _start(c: Collector, log: Path) -> None:
    """Start ``c`` with its log in ``log``, and wait until it answers /healthz."""
    with open(log, "wb") as f:
        c.proc = subprocess.Popen([COLLECTOR, "run"], env=c.env, stderr=f)
    STARTED.append(c)
    servers.wait_http(f"{c.url}/healthz")


def _request(
    url: str, token: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, or of a POST of ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _post_batch(c: Collector, token: str, n: int = 3) -> int:
    """POST ``n`` dns records; the status."""
    now = time.time_ns()
    records = [
        {
            "kind": "dns",
            "ts": now - i * 1000,
            "target": "first-run",
            "server": "192.0.2.53",
            "port": 53,
            "transport": "udp",
            "qname": "example.com.",
            "qtype": "SOA",
            "rcode": "NOERROR",
            "timestamping": "kernel",
            "rtt_ms": 10.0 + i,
            "topology": "anycast",
            "family": 4,
        }
        for i in range(n)
    ]
    batch = {"schema": 1, "batch": f"b-{now}", "sent_at": now, "measurements": records}
    status, _, body = _request(f"{c.url}/api/v1/measurements", token, batch)
    assert status != 200 or json.loads(body)["accepted"] == n, body
    return status


@contextlib.contextmanager
def _serving(app: web.Application) -> Iterator[str]:
    """``app`` on a loopback port, in a thread of its own; its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _influxdb_2(databases: list[str]) -> web.Application:
    """A stand-in for InfluxDB 2.x's ``/ping`` and v1-compatible ``SHOW DATABASES``.

    Why a stand-in: InfluxDB 2.x cannot be installed here (Debian has 1.6.7 only). What
    the collector asks at start is all this answers: ``/ping`` with 2.x's version header,
    and ``/query?q=SHOW DATABASES`` listing the databases mapped to buckets (DBRP)."""
    app = web.Application()

    async def ping(request: web.Request) -> web.Response:
        return web.Response(
            status=204, headers={"X-Influxdb-Version": "v2.7.11", "X-Influxdb-Build": "OSS"}
        )

    async def query(request: web.Request) -> web.Response:
        series: dict[str, Any] = {"name": "databases", "columns": ["name"]}
        if databases:
            series["values"] = [[d] for d in databases]
        return web.json_response({"results": [{"statement_id": 0, "series": [series]}]})

    app.router.add_get("/ping", ping)
    app.router.add_get("/query", query)
    return app


# ------------------------------------------------------------------ the InfluxDB API


def test_auto_writes_to_influxdb_1_6_with_the_v1_api(influx: InfluxDB, tmp_path: Path) -> None:
    """With no API set, the collector asks /ping, finds Debian's 1.6.7 and writes with
    v1: accepted points are in InfluxDB (was: the v2 default, a 404 on every write, and
    points spooled forever)."""
    data = tmp_path / "data"
    (token,) = register(data, {"probe-auto": "eu-central"}).values()
    c = _collector(influx, data, "auto1")
    _start(c, tmp_path / "log")
    assert _post_batch(c, token) == 200
    rows = wait_stored(influx, "auto1", 3, timeout=15)
    assert len(rows) == 3
    assert "InfluxDB 1.6.7~rc0, v1 API" in (tmp_path / "log").read_text()


class AuthInfluxDB(InfluxDB):
    """InfluxDB 1.6.7 with ``auth-enabled = true`` in ``[http]``, as the README says to
    run one that other hosts reach; an admin user ``admin`` is made at start."""

    def start(self) -> AuthInfluxDB:
        from popwatch_lab import influx as influxconf

        d = self.dir
        conf = influxconf.config(d, f"127.0.0.1:{self.port}", f"127.0.0.1:{self.rpc_port}")
        (d / "influxdb.conf").write_text(
            conf.replace("[http]\n", "[http]\n  auth-enabled = true\n", 1)
        )
        self.log = open(d / "log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["influxd", "-config", str(d / "influxdb.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        influxconf.wait_ready(self.url, self.proc, d / "log")
        self.ask("CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES", auth=False)
        return self

    def ask(self, q: str, db: str = "", auth: bool = True) -> Any:
        import base64
        import urllib.parse

        req = urllib.request.Request(
            f"{self.url}/query", data=urllib.parse.urlencode({"q": q, "db": db}).encode()
        )
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(b"admin:admin-pw").decode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)


def test_v1_writes_with_user_and_password_to_an_influxdb_with_auth(tmp_path: Path) -> None:
    """`influxdb_token: user:password` reaches InfluxDB 1.6.7 with auth on: it takes
    that only as basic auth (was: sent as `Authorization: Token user:password`, which
    1.6.7 answers "unable to parse authentication credentials", so every point stayed
    in the spool)."""
    data = tmp_path / "data"
    (token,) = register(data, {"probe-auth": "eu-central"}).values()
    with AuthInfluxDB() as influx:
        influx.start()
        influx.ask('CREATE DATABASE "authdb"')
        influx.ask("CREATE USER writer WITH PASSWORD 'writer-pw'")
        influx.ask('GRANT ALL ON "authdb" TO writer')
        c = _collector(influx, data, "authdb", POPWATCH_INFLUXDB_TOKEN="writer:writer-pw")  # noqa: S106
        _start(c, tmp_path / "log")
        assert _post_batch(c, token) == 200
        deadline = time.monotonic() + 15
        while True:
            series = influx.ask("SELECT count(rtt_ms) FROM dns", "authdb")["results"][0]
            if series.get("series") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        log = (tmp_path / "log").read_text()
        assert series.get("series", [{}])[0].get("values", [[0, 0]])[0][1] == 3, log
        assert "authentication" not in log


def test_auto_writes_to_influxdb_1_8_with_the_v2_api(influx: InfluxDB, tmp_path: Path) -> None:
    """A server that says 1.8 (tests/support/v2shim.py in front of 1.6.7) gets the v2 API: the
    points go through /api/v2/write."""
    shim = v2shim.make_app(influx.url)
    with _serving(shim) as url:
        data = tmp_path / "data"
        (token,) = register(data, {"probe-v2": "eu-central"}).values()
        influx.query('CREATE DATABASE "auto2"')
        c = _collector(influx, data, "auto2", POPWATCH_INFLUXDB_URL=url)
        _start(c, tmp_path / "log")
        assert _post_batch(c, token) == 200
        rows = wait_stored(influx, "auto2", 3, timeout=15)
        c.stop()
    assert len(rows) == 3
    assert shim[v2shim.BODIES]  # the v2 path was taken
    assert "InfluxDB 1.8.10, v2 API" in (tmp_path / "log").read_text()


def test_v2_against_influxdb_1_6_stops_at_start(influx: InfluxDB, tmp_path: Path) -> None:
    """An explicit v2 against 1.6.7, which has no /api/v2/write, is one line at start."""
    c = _collector(influx, tmp_path / "data", "x", POPWATCH_INFLUXDB_API="v2")
    line = _fails("run", env=c.env)
    assert line == (
        f"popwatch-collector: influxdb_api: v2 needs InfluxDB 1.8 or later, and {influx.url} "
        "is InfluxDB 1.6.7~rc0: set influxdb_api (POPWATCH_INFLUXDB_API) to auto or v1"
    )


def test_v1_against_influxdb_2_without_a_mapping_stops_at_start(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """An explicit v1 against InfluxDB 2.x, whose /write needs the database mapped to a
    bucket, is one line at start when no mapping names it."""
    with _serving(_influxdb_2(["other"])) as url:
        c = _collector(influx, tmp_path / "data", "popwatch", POPWATCH_INFLUXDB_API="v1")
        c.env["POPWATCH_INFLUXDB_URL"] = url
        line = _fails("run", env=c.env)
    assert line.startswith(
        f"popwatch-collector: influxdb_api: v1 on InfluxDB v2.7.11 at {url} needs the "
        "database 'popwatch' mapped to a bucket (a DBRP mapping), and there is none"
    )


def test_influxdb_down_at_start_chooses_the_api_when_it_answers(tmp_path: Path) -> None:
    """With InfluxDB down at start, the collector serves: points wait in the spool, and
    when InfluxDB first answers the API is chosen (v1 for 1.6.7) and they are written."""
    data = tmp_path / "data"
    (token,) = register(data, {"probe-late": "eu-central"}).values()
    with InfluxDB() as late:
        c = _collector(late, data, "late")
        _start(c, tmp_path / "log")
        assert _post_batch(c, token) == 200  # accepted: durable in the spool
        assert "is chosen when it answers" in (tmp_path / "log").read_text()
        late.start()
        rows = wait_stored(late, "late", 3, timeout=40)
        assert len(rows) == 3
        c.stop()
    assert "writing with the v1 API" in (tmp_path / "log").read_text()


# ------------------------------------------------------------ paths, ports, files


@needs_root
@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["run"], "set POPWATCH_DATA_DIR (or data_dir) to a writable directory"),
        (
            ["probes", "add", "p1", "--region", "eu"],
            "pass --data-dir or set POPWATCH_DATA_DIR to a writable directory",
        ),
    ],
)
def test_non_root_with_the_default_data_dir(args: list[str], hint: str) -> None:
    """`run` and `probes add` as a non-root user with the default data dir name the path
    they cannot use and how to choose another (was: a PermissionError traceback)."""
    env = dict(os.environ)
    env.pop("POPWATCH_DATA_DIR", None)
    line = _fails(*args, env=env, as_nobody=True)
    prefix = "popwatch-collector" if args[0] == "run" else "popwatch-collector probes add"
    assert line == f"{prefix}: data_dir: cannot use /var/lib/popwatch: Permission denied; {hint}"


def test_listen_on_a_port_in_use(influx: InfluxDB, tmp_path: Path) -> None:
    """`listen` on a port another socket holds names the port (one line, exit 2)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        c = _collector(influx, tmp_path / "data", "x", POPWATCH_LISTEN=f"127.0.0.1:{port}")
        line = _fails("run", env=c.env)
    assert line == (
        f"popwatch-collector: listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_tls_files_that_do_not_load(influx: InfluxDB, tmp_path: Path) -> None:
    """A missing certificate or key names the key and the path; a file that is not PEM
    says so (was: `[Errno 2] No such file or directory`, no path)."""
    cert, key = servers.make_cert(tmp_path)
    missing = tmp_path / "nowhere" / "x.pem"
    c = _collector(influx, tmp_path / "data", "x")
    env = {**c.env, "POPWATCH_TLS_CERT": str(missing), "POPWATCH_TLS_KEY": str(key)}
    assert _fails("run", env=env) == (
        f"popwatch-collector: tls_cert: cannot read {missing}: No such file or directory"
    )
    env = {**c.env, "POPWATCH_TLS_CERT": str(cert), "POPWATCH_TLS_KEY": str(missing)}
    assert _fails("run", env=env) == (
        f"popwatch-collector: tls_key: cannot read {missing}: No such file or directory"
    )
    env = {**c.env, "POPWATCH_TLS_CERT": str(key), "POPWATCH_TLS_KEY": str(cert)}
    assert _fails("run", env=env).startswith(
        f"popwatch-collector: tls_cert: {key} and tls_key {cert} do not load as a PEM "
        "certificate chain and its private key"
    )


# ------------------------------------------------------------------ the targets file

GOOD = (
    "targets:\n  - {{name: {name}, topology: anycast, server: 192.0.2.1, "
    "queries: [{{qname: example.com}}]}}\n"
)


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (None, "cannot read: No such file or directory"),
        (
            "targets:\n  - {name: a, topology: anycast, srever: 192.0.2.1, "
            "queries: [{qname: example.com}]}\n",
            "targets[0].srever: unknown key",
        ),
    ],
)
def test_targets_file_is_checked_at_start(
    influx: InfluxDB, tmp_path: Path, content: str | None, fault: str
) -> None:
    """A missing or invalid targets file stops the start with one line naming the file
    and the fault (was: the collector started silently and /api/v1/config said 500)."""
    targets = tmp_path / "targets.yaml"
    if content is not None:
        targets.write_text(content)
    c = _collector(influx, tmp_path / "data", "x", POPWATCH_TARGETS=str(targets))
    line = _fails("run", env=c.env)
    assert line.startswith(f"popwatch-collector: {targets}: {fault}"), line


def test_a_bad_edit_of_the_targets_keeps_the_last_good_list(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """While the served file is broken (or gone), probes get the last list that loaded,
    with its ETag, and the fault is logged once; a fixed file is served at once."""
    data = tmp_path / "data"
    (token,) = register(data, {"probe-cfg": "eu-central"}).values()
    targets = tmp_path / "targets.yaml"
    targets.write_text(GOOD.format(name="first"))
    c = _collector(influx, data, "x", POPWATCH_TARGETS=str(targets))
    _start(c, tmp_path / "log")
    url = f"{c.url}/api/v1/config"

    status, headers, body = _request(url, token)
    assert status == 200
    assert [t["name"] for t in json.loads(body)["targets"]] == ["first"]
    etag = headers["ETag"]

    targets.write_text(GOOD.format(name="second").replace("server:", "srever:"))
    for _ in range(3):
        assert _request(url, token)[::2] == (200, body)
    assert _request(url, token, headers={"If-None-Match": etag})[0] == 304
    log = (tmp_path / "log").read_text()
    assert log.count("targets[0].srever: unknown key") == 1, log
    assert "serving the last good list (1 targets)" in log

    targets.unlink()
    assert _request(url, token)[::2] == (200, body)

    targets.write_text(GOOD.format(name="second"))
    status, headers, fixed = _request(url, token)
    assert status == 200 and headers["ETag"] != etag
    assert [t["name"] for t in json.loads(fixed)["targets"]] == ["second"]


# ---------------------------------------------------------------- settings themselves


def test_influxdb_url_without_a_scheme(influx: InfluxDB, tmp_path: Path) -> None:
    """`POPWATCH_INFLUXDB_URL=127.0.0.1:8086` is refused with the URL it should be (was:
    accepted, and every write failed into the spool)."""
    c = _collector(influx, tmp_path / "data", "x", POPWATCH_INFLUXDB_URL="127.0.0.1:8086")
    assert _fails("run", env=c.env) == (
        "popwatch-collector: POPWATCH_INFLUXDB_URL: '127.0.0.1:8086' is not an http(s) URL "
        "with a host; did you mean http://127.0.0.1:8086?"
    )


@pytest.mark.parametrize("form", [["--at", "-2h"], ["--at=-2h"], ["--at", "-90m"]])
def test_alerts_check_takes_a_relative_time_as_the_readme_writes_it(
    influx: InfluxDB, tmp_path: Path, form: list[str]
) -> None:
    """`alerts check --at -2h`, as the README and --help write it, evaluates at two hours
    ago (was: argparse's `argument --at: expected one argument`, exit 2)."""
    env = {
        **os.environ,
        "POPWATCH_INFLUXDB_URL": influx.url,
        "POPWATCH_INFLUXDB_BUCKET": "at_relative",
        "POPWATCH_DATA_DIR": str(tmp_path),
    }
    influx.query('CREATE DATABASE "at_relative"')
    out = subprocess.run(
        [COLLECTOR, "alerts", "check", *form],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "expected one argument" not in out.stderr
    assert out.returncode == 0, (out.returncode, out.stderr)
    # its summary starts with the evaluation time: that long ago
    ago = 7200 if form[-1].endswith("2h") else 5400
    stamp = out.stderr.split("Z:", 1)[0]
    at = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.UTC).timestamp()
    assert abs(time.time() - ago - at) < 60, out.stderr
    # a value that is no time still reaches the time check, with its own words
    assert _fails("alerts", "check", "--at", "-2x", env=env) == (
        "popwatch-collector: --at: '-2x' is not a time (now, -15m, epoch seconds or ISO 8601)"
    )


def test_unknown_keys_and_variables_get_a_hint(influx: InfluxDB, tmp_path: Path) -> None:
    """A misspelt key in the file, or a misspelt variable, is one line naming it and the
    setting it resembles; a bad value from a variable names the variable."""
    c = _collector(influx, tmp_path / "data", "x")
    conf = tmp_path / "collector.yaml"
    conf.write_text("influxdb_ulr: http://127.0.0.1:8086\n")
    assert _fails("run", "--config", str(conf), env=c.env) == (
        f"popwatch-collector: {conf}: influxdb_ulr: unknown key (did you mean influxdb_url?)"
    )
    env = {**c.env, "POPWATCH_INFLUXDB_ULR": "http://127.0.0.1:8086"}
    assert _fails("run", env=env) == (
        "popwatch-collector: POPWATCH_INFLUXDB_ULR: unknown variable "
        "(did you mean POPWATCH_INFLUXDB_URL?)"
    )
    env = {**c.env, "POPWATCH_LISTEN": "127.0.0.1:80800"}
    assert _fails("run", env=env).startswith(
        "popwatch-collector: POPWATCH_LISTEN: '127.0.0.1:80800': port must be 1-65535"
    )


# ------------------------------------------------------------------------ the registry


@pytest.mark.parametrize("action", [["list"], ["revoke", "p1"]])
def test_list_or_revoke_without_a_registry(tmp_path: Path, action: list[str]) -> None:
    """`probes list` or `revoke` on a data dir with no registry (a typo, say) says so and
    creates nothing (was: an empty registry made there, and an empty list)."""
    typo = tmp_path / "dta"
    line = _fails("probes", *action, "--data-dir", str(typo))
    assert line.startswith(
        f"popwatch-collector probes {action[0]}: no registry at {typo}/registry.sqlite: "
        "`popwatch-collector probes add` creates it"
    )
    assert not typo.exists()


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["probe-1\n", "--region", "eu"], "probe id 'probe-1\\n': use 1-63 of"),
        (["probe-1", "--region", "eu\n"], "region 'eu\\n': use 1-63 of"),
        (["probe 1", "--region", "eu"], "probe id 'probe 1': use 1-63 of"),
        (["p", "--region", "eu", "--country", "de"], "country 'de': use a two-letter"),
        (["p", "--region", "eu", "--country", "DE\n"], "country 'DE\\n': use a two-letter"),
        (
            ["p", "--region", "eu", "--asn", "99999999999999999999"],
            "asn 99999999999999999999: must be within 0..4294967295",
        ),
        (["p", "--region", "eu", "--asn", "-1"], "asn -1: must be within 0..4294967295"),
        (["p", "--region", "eu", "--lat", "91"], "lat 91.0: must be within -90..90"),
        (["p", "--region", "eu", "--lat", "nan"], "lat nan: must be within -90..90"),
        (["p", "--region", "eu", "--lon", "-180.5"], "lon -180.5: must be within -180..180"),
        (["p", "--region", "eu", "--city", "Bad\nCity"], "city 'Bad\\nCity': no line breaks"),
    ],
)
def test_probes_add_refuses_what_a_tag_cannot_carry(
    tmp_path: Path, args: list[str], fault: str
) -> None:
    """Each bad identity is one line naming the value (was: a trailing newline accepted,
    which broke every record and `probes list`; a huge --asn an OverflowError)."""
    data = tmp_path / "data"
    line = _fails("probes", "add", *args, "--data-dir", str(data))
    assert line.startswith(f"popwatch-collector probes add: {fault}"), line
    assert not (data / "registry.sqlite").exists()


def test_a_good_probe_is_added_and_listed(tmp_path: Path) -> None:
    """The checks pass a full, valid identity, and `probes list` shows it."""
    data = tmp_path / "data"
    args = ["--country", "DE", "--city", "Frankfurt", "--lat", "50.11", "--lon", "8.68"]
    register(data, {"probe-fra-1": "eu-central"}, *args, "--asn", "4294967295")
    out = subprocess.run(
        [COLLECTOR, "probes", "list", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.splitlines()[1].split()[:5] == [
        "probe-fra-1",
        "eu-central",
        "DE",
        "Frankfurt",
        "active",
    ]


# ------------------------------------------------------------------------------ help


def _subparsers(parser: Any) -> Iterator[tuple[str, Any]]:
    yield parser.prog, parser
    for action in parser._actions:
        for sub in (action.choices or {}).values() if action.nargs == "A..." else ():
            yield from _subparsers(sub)


def test_every_option_has_help() -> None:
    """Every option and argument of every command says what it is for."""
    seen = []
    for prog, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if action.nargs == "A...":  # the list of commands: each has its own help
                continue
            assert action.help, (prog, action.option_strings or action.dest)
            seen.append(prog)
    assert "popwatch-collector probes add" in seen


@pytest.mark.parametrize(
    "command", [["probes"], ["probes", "add"], ["probes", "list"], ["probes", "revoke"], ["run"]]
)
def test_help_shows_examples(command: list[str]) -> None:
    """`--help` of each command ends in examples."""
    out = subprocess.run(
        [COLLECTOR, *command, "--help"], capture_output=True, text=True, check=True, timeout=30
    )
    assert "example" in out.stdout.split("options:")[1]
    assert f"popwatch-collector {' '.join(command)}" in out.stdout.split("options:")[1]


def test_run_help_lists_every_setting_with_its_variable() -> None:
    """`run --help` names each key with its variable and default."""
    from collector.config import CollectorConfig

    out = subprocess.run(
        [COLLECTOR, "run", "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for key in CollectorConfig.__struct_fields__:
        if key in ("alerts", "limits"):  # a section: its keys are POPWATCH_<SECTION>_<KEY>
            assert f"  {key}  (POPWATCH_{key.upper()}_<KEY>)" in out
            continue
        assert f"  {key}  (POPWATCH_{key.upper()}, default " in out, key
    assert "influxdb_api  (POPWATCH_INFLUXDB_API, default auto)" in out
