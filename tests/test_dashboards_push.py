"""``popwatch-collector dashboards push`` against a stand-in Grafana that records the calls.

No Grafana server can run here: Grafana is not packaged for Debian, and nothing from
outside the package registries can be fetched. ``FakeGrafana`` is the stand-in: an HTTP
server on loopback that answers the few Grafana HTTP API endpoints the push uses (data
sources by uid, folders, ``POST /api/dashboards/db``) the way Grafana 11 documents them
(404 for a missing one, 409 for a duplicate uid, 412 for a dashboard saved over without
``overwrite``, 401 for a bad token), keeps what it was given, and records every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import servers

from dashboards.build import build_all
from dashboards.push import InfluxSource, PushError, connect, datasource_model, push

ROOT = Path(__file__).parent.parent
TOKEN = "glsa_test_token"  # noqa: S105 - the stand-in's own
COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
SOURCE = InfluxSource("http://influxdb:8086", "popwatch", "influx-token")


class FakeGrafana(ThreadingHTTPServer):
    """The stand-in Grafana (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: list[tuple[str, str, Any]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.fail: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def state(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(
                {
                    "datasources": self.datasources,
                    "folders": self.folders,
                    "dashboards": self.dashboards,
                }
            )
        )

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) in self.fail:
            return self.fail[(method, path)]
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            return 200, self.datasources[uid]
        if method == "POST" and path == "/api/datasources":
            if body["uid"] in self.datasources:
                return 409, {"message": "data source with the same uid already exists"}
            self.datasources[body["uid"]] = {**body, "id": len(self.datasources) + 1}
            return 200, {"message": "Datasource added", "datasource": body}
        if method == "PUT" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            self.datasources[uid] = {**body, "id": self.datasources[uid]["id"]}
            return 200, {"message": "Datasource updated", "datasource": body}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.folders:
                return 404, {"message": "folder not found"}
            return 200, self.folders[uid]
        if method == "POST" and path == "/api/folders":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = body
            return 200, body
        if method == "POST" and path == "/api/dashboards/db":
            board, folder = body["dashboard"], body.get("folderUid")
            if folder not in self.folders:
                return 400, {"message": "folder not found"}
            if board["uid"] in self.dashboards and not body.get("overwrite"):
                return 412, {"status": "name-exists", "message": "A dashboard with the same uid"}
            self.dashboards[board["uid"]] = {"folderUid": folder, "dashboard": board}
            uid = board["uid"]
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}
        return 404, {"message": "Not found"}


class Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.calls.append((self.command, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, answer = 401, {"message": "invalid API key"}
        else:
            status, answer = self.server.answer(self.command, self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    thread = threading.Thread(target=g.serve_forever, daemon=True)
    thread.start()
    yield g
    g.shutdown()
    g.server_close()
    thread.join()


def committed() -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards/json").glob("*.json"))
    }


DASHBOARD_CALLS = [("POST", "/api/dashboards/db")] * len(build_all())


def test_first_push_creates_the_data_source_folder_and_dashboards(grafana: FakeGrafana) -> None:
    """The exact calls of a first push, and what they carry: the InfluxQL data source with
    the token in a header, the folder, and each committed dashboard, overwritten."""
    lines = push(connect(grafana.url, TOKEN), SOURCE)
    assert [(m, p) for m, p, _ in grafana.calls] == [
        ("GET", "/api/datasources/uid/popwatch-influxdb"),
        ("POST", "/api/datasources"),
        ("GET", "/api/folders/popwatch"),
        ("POST", "/api/folders"),
        *DASHBOARD_CALLS,
    ]
    ds = grafana.calls[1][2]
    assert ds == datasource_model(SOURCE)
    assert ds["uid"] == "popwatch-influxdb" and ds["type"] == "influxdb"
    assert ds["jsonData"]["dbName"] == "popwatch"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"] == {"httpHeaderValue1": "Token influx-token"}
    assert grafana.calls[3][2] == {"title": "popwatch", "uid": "popwatch"}
    sent = [body for _, path, body in grafana.calls if path == "/api/dashboards/db"]
    assert all(b["folderUid"] == "popwatch" and b["overwrite"] is True for b in sent)
    assert {b["dashboard"]["uid"]: {**b["dashboard"], "id": None} for b in sent} == {
        board["uid"]: {**board, "id": None} for board in committed().values()
    }
    assert lines[0].startswith("data source popwatch-influxdb created")


def test_a_second_push_is_idempotent(grafana: FakeGrafana) -> None:
    """Pushing again updates the data source in place, finds the folder, and overwrites
    the dashboards by uid: Grafana holds exactly what the first push left."""
    push(connect(grafana.url, TOKEN), SOURCE)
    after_first = grafana.state()
    grafana.calls.clear()
    push(connect(grafana.url, TOKEN), SOURCE)
    assert [(m, p) for m, p, _ in grafana.calls] == [
        ("GET", "/api/datasources/uid/popwatch-influxdb"),
        ("PUT", "/api/datasources/uid/popwatch-influxdb"),
        ("GET", "/api/folders/popwatch"),
        *DASHBOARD_CALLS,
    ]
    assert grafana.state() == after_first
    assert len(grafana.datasources) == 1 and len(grafana.folders) == 1
    assert len(grafana.dashboards) == len(build_all())


def test_no_datasource_leaves_data_sources_alone(grafana: FakeGrafana) -> None:
    """Without a source (``--no-datasource``) no data source endpoint is called."""
    push(connect(grafana.url, TOKEN), None)
    assert not [c for c in grafana.calls if "datasources" in c[1]]
    assert grafana.datasources == {} and len(grafana.dashboards) == len(build_all())


def test_errors_say_what_grafana_answered(grafana: FakeGrafana) -> None:
    """A refused token, a failing save and an unreachable Grafana each name the step and
    Grafana's answer."""
    with pytest.raises(
        PushError,
        match=r"^reading data source popwatch-influxdb: Grafana "
        r"answered HTTP 401: invalid API key$",
    ):
        push(connect(grafana.url, "wrong"), SOURCE)
    grafana.fail[("POST", "/api/dashboards/db")] = (500, {"message": "database is locked"})
    with pytest.raises(
        PushError,
        match=r"^saving dashboard popwatch-overview \(overview\): "
        r"Grafana answered HTTP 500: database is locked$",
    ):
        push(connect(grafana.url, TOKEN), None)
    with pytest.raises(PushError, match=r"^reading folder popwatch: "):
        push(connect(f"http://127.0.0.1:{servers.free_port()}", TOKEN, timeout=2), None)


def test_the_cli_pushes_with_the_collectors_influxdb_settings(
    grafana: FakeGrafana, tmp_path: Path
) -> None:
    """``dashboards push`` takes the data source's URL, database and token from the
    collector's settings, prints what it did, and exits 0; a refused token exits 1 with
    Grafana's answer."""
    env = {
        "PATH": "/usr/bin:/bin",
        "POPWATCH_INFLUXDB_URL": "http://influx.example:8086",
        "POPWATCH_INFLUXDB_BUCKET": "metrics/autogen",
        "POPWATCH_INFLUXDB_TOKEN": "secret",
    }
    argv = [COLLECTOR, "dashboards", "push", "--grafana-url", grafana.url]
    out = subprocess.run([*argv, "--token", TOKEN], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "data source popwatch-influxdb created (http://influx.example:8086, metrics)" in (
        out.stdout
    )
    assert grafana.datasources["popwatch-influxdb"]["secureJsonData"] == {
        "httpHeaderValue1": "Token secret"
    }
    bad = subprocess.run([*argv, "--token", "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        f"popwatch-collector dashboards push: {grafana.url}: reading data source "
        "popwatch-influxdb: Grafana answered HTTP 401: invalid API key"
    )


def test_the_cli_builds_and_checks_the_json(tmp_path: Path) -> None:
    """``dashboards build`` writes what ``--check`` then finds current, and the committed
    files are current."""
    out = tmp_path / "json"
    subprocess.run(
        [COLLECTOR, "dashboards", "build", "--out", str(out)], check=True, capture_output=True
    )
    argv = [COLLECTOR, "dashboards", "build", "--check", "--out"]
    assert subprocess.run([*argv, str(out)], capture_output=True).returncode == 0
    assert (
        subprocess.run([*argv, str(ROOT / "dashboards/json")], capture_output=True).returncode == 0
    )
    (out / "fleet.json").write_text("{}")
    bad = subprocess.run([*argv, str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "fleet.json: differs" in bad.stderr


def test_without_the_dashboards_extra_the_commands_say_how_to_install_it() -> None:
    """`dashboards build` and `push` where the Grafana libraries are not installed (the
    probe image, a plain install): one line naming the extra, exit 2, no traceback."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['grafana_foundation_sdk'] = None; "
        "sys.modules['grafana_client'] = None; "
        "from collector.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for cmd in (
        ["dashboards", "build", "--out", "/nonexistent"],
        ["dashboards", "push", "--grafana-url", "http://127.0.0.1:9"],
    ):
        out = subprocess.run(
            [sys.executable, "-c", code, *cmd], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'popwatch[dashboards]'" in lines[0], out.stderr


class Hostile(BaseHTTPRequestHandler):
    """A Grafana gone bad (a stand-in: no Grafana can run here), by ``server.mode``:
    ``trickle`` answers a byte every 0.5 s, ``huge`` answers 200 with an endless body,
    ``redirect`` answers 307 to another host (where a second server records what
    arrives)."""

    server: Any

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, body, dict(self.headers)))
        mode = self.server.mode
        try:
            if mode == "redirect":
                self.send_response(307)
                self.send_header("Location", self.server.elsewhere + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if mode == "trickle":
                for _ in range(200):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            elif mode == "huge":
                chunk = b" " * 1_000_000
                for _ in range(800):  # 800 MB, if anyone read it all
                    self.wfile.write(chunk)
            elif mode == "record":
                self.wfile.write(b"{}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def hostile(mode: str, elsewhere: str = "") -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.mode, server.seen, server.elsewhere = mode, [], elsewhere  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def push_cmd(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COLLECTOR, "dashboards", "push", "--grafana-url", url, "--token", TOKEN, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "POPWATCH_INFLUXDB_TOKEN": "influx-secret"},
    )


def test_a_trickling_grafana_is_given_the_whole_timeout_and_no_more() -> None:
    """A Grafana that answers a byte every half second: --timeout bounds the whole push,
    not each read; one line, exit 1."""
    with hostile("trickle") as g:
        t0 = time.monotonic()
        out = push_cmd(f"http://127.0.0.1:{g.server_port}", "--timeout", "3")
        took = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    assert "did not answer within 3 s" in out.stderr and len(out.stderr.splitlines()) == 1
    assert took < 30, took  # 200 bytes at 0.5 s would take 100 s


def test_a_huge_answer_is_not_read_whole() -> None:
    """An answer of 800 MB: the push stops at the bound with one line, exit 1, and its
    memory stays small (the child's peak RSS, read from the kernel)."""
    with hostile("huge") as g:
        code = (
            "import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(r.returncode)\n"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                COLLECTOR,
                "dashboards",
                "push",
                "--grafana-url",
                f"http://127.0.0.1:{g.server_port}",
                "--token",
                TOKEN,
                "--no-datasource",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1, out.stderr
    assert "bytes: not read further" in out.stderr
    assert int(out.stdout.split()[-1]) < 300_000  # kB: well under the 800 MB offered


def test_a_redirect_to_another_host_is_not_followed() -> None:
    """A 307 to another host would re-send the data source with the InfluxDB token: the
    push refuses it, and nothing reaches the other host."""
    with hostile("record") as other, hostile("redirect") as g:
        g.elsewhere = f"http://localhost:{other.server_port}"
        out = push_cmd(f"http://127.0.0.1:{g.server_port}")
    assert out.returncode == 1, out.stderr
    assert "another host: not followed" in out.stderr
    assert other.seen == []
    assert all(b"influx-secret" not in body for _, _, body, _ in g.seen)


def test_the_cli_says_in_one_line_what_is_wrong_with_the_grafana_url(tmp_path: Path) -> None:
    """`dashboards push` with a URL without a scheme says which one was meant (exit 2,
    the collector's own URL check; was: "No connection adapters were found for
    '://None/...'"); with a closed port, one line saying it cannot connect (exit 1; was:
    urllib3's MaxRetryError); with a web server that is not Grafana (a real aiohttp
    server on loopback answering 404 in plain text), one line saying so (exit 1; was: a
    bare 404 and the page). Each with and without the data source step."""
    import asyncio

    from aiohttp import web

    env = {"PATH": "/usr/bin:/bin", "POPWATCH_DATA_DIR": str(tmp_path)}

    def push_cli(url: str, *more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COLLECTOR, "dashboards", "push", "--grafana-url", url, "--timeout", "10", *more],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    prefix = "popwatch-collector dashboards push: "
    out = push_cli("127.0.0.1:3000")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"{prefix}--grafana-url: '127.0.0.1:3000' is not an http(s) URL with a host; "
        "did you mean http://127.0.0.1:3000?"
    )

    closed = f"http://127.0.0.1:{servers.free_port()}"
    for more, step in (
        ((), "reading data source popwatch-influxdb"),
        (("--no-datasource",), "reading folder popwatch"),
    ):
        out = push_cli(closed, *more)
        assert out.returncode == 1
        assert out.stderr.strip() == f"{prefix}{closed}: {step}: cannot connect: Connection refused"

    loop = asyncio.new_event_loop()
    app = web.Application()  # every path: aiohttp's own "404: Not Found", text/plain
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    serving = threading.Thread(target=loop.run_forever, daemon=True)
    serving.start()
    other = f"http://127.0.0.1:{port}"
    try:
        for more, step in (
            ((), "reading data source popwatch-influxdb"),
            (("--no-datasource",), "reading folder popwatch"),
        ):
            out = push_cli(other, *more)
            assert out.returncode == 1
            assert out.stderr.strip() == (
                f"{prefix}{other}: {step}: the server answered HTTP 404 without JSON: not "
                "Grafana's HTTP API (is the URL Grafana's base URL, such as "
                "http://127.0.0.1:3000?)"
            )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        serving.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
