"""The lab's daemon without the lab: its command table (popwatch_lab/commands.py) and
its control socket (popwatch_lab/control.py), served on a temporary path. No root.

The commands act on a stand-in for the built lab (``FakeWorld``, which says why in its
docstring); the control socket is the daemon's own server on a real Unix socket, and
the ``popwatch-lab`` commands talk to it as they talk to a running lab.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from popwatch_lab import cli
from popwatch_lab.commands import COMMANDS, BadRequest, Lab
from popwatch_lab.control import MAX_LINE, ControlServer
from popwatch_lab.stack import LabConfig
from popwatch_lab.world import FIRST_SERIAL, WORLD, Node

CONVERGENCE_S = 0.3


class FakeWorld:
    """A stand-in for the built lab (``popwatch_lab.build.BuiltLab``): it keeps the
    routes it is given and records every change the commands ask for, touching nothing.

    Why a stand-in: the real one needs root, network namespaces, TUN devices, Knot,
    InfluxDB, Alertmanager and the collector, and seconds to build; what is tested here
    (the checks, the state, the convergence, the socket) is the same over either.
    tests/test_lab.py drives the real one end to end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.shaper = "wire"
        self.shaped: list[dict[str, dict[str, Any]]] = []
        self.routes: dict[str, str | None] = {}
        self.links_down: set[str] = set()
        self.serials: dict[str, int] = {}
        self.teardowns = 0
        self.fail_serial: Exception | None = None

    def shape(self, params: dict[str, dict[str, Any]]) -> None:
        self.shaped.append(copy.deepcopy(params))

    def routed_site(self, region: Node) -> str | None:
        return self.routes.get(region.name)

    def set_route(self, region: Node, site: Node | None) -> None:
        self.routes[region.name] = site.name if site else None

    def set_region_link(self, region: Node, up: bool) -> None:
        (self.links_down.discard if up else self.links_down.add)(region.name)

    def set_serial(self, server: Node, serial: int) -> None:
        if self.fail_serial:
            raise self.fail_serial
        self.serials[server.name] = serial

    def measure(self, region: Node) -> dict[str, Any]:
        return {"rtt_ms": 1.0, "nsid": self.routes.get(region.name), "serial": FIRST_SERIAL}

    def processes(self) -> list[dict[str, Any]]:
        return []

    def teardown(self) -> None:
        self.teardowns += 1


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short path (a Unix socket's path has at most 107 bytes; tmp_path's can be longer)."""
    d = Path(tempfile.mkdtemp(prefix="pwl-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def new_lab(run_dir: Path) -> tuple[Lab, FakeWorld]:
    fake = FakeWorld(run_dir)
    lab = Lab(LabConfig(convergence_s=CONVERGENCE_S), fake)
    lab.apply_routes()
    return lab, fake


@pytest.fixture
def lab(run_dir: Path) -> tuple[Lab, FakeWorld]:
    return new_lab(run_dir)


# ----------------------------------------------------------------------------- commands

NEAREST = WORLD.catchment(set(WORLD.site_names))


def test_the_commands_are_a_table_of_what_the_cli_sends() -> None:
    """Every command the CLI sends to the daemon is in the table, with its fields."""
    assert set(COMMANDS) == {
        "status",
        "fail",
        "restore",
        "degrade",
        "cut",
        "steer",
        "bump-serial",
        "down",
    }
    assert [f.name for f in COMMANDS["degrade"].fields] == ["site", "delay_ms", "loss"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay_ms", math.nan),
        ("delay_ms", math.inf),
        ("delay_ms", -math.inf),
        ("delay_ms", -5),
        ("delay_ms", 1e300),
        ("delay_ms", "150"),
        ("delay_ms", True),
        ("delay_ms", None),
        ("loss", math.nan),
        ("loss", -0.1),
        ("loss", 1.5),
        ("loss", "0.05"),
    ],
)
def test_degrade_takes_only_finite_figures_in_range(
    lab: tuple[Lab, FakeWorld], field: str, value: object
) -> None:
    """A NaN, infinite, negative, too large or non-number delay or loss is refused in one
    line naming the field, and the data plane is not touched (a NaN delay once spun the
    wire at 100 % of a core and timed out every query)."""
    the_lab, fake = lab
    req = {"cmd": "degrade", "site": "ams", "delay_ms": 150.0, "loss": 0.05, field: value}
    with pytest.raises(BadRequest, match=rf"^{field} must be a number from 0 to ") as err:
        the_lab.handle(req)
    assert "\n" not in str(err.value)
    assert fake.shaped == [] and the_lab.links["ams"].healthy


def test_degrade_shapes_the_sites_link(lab: tuple[Lab, FakeWorld]) -> None:
    the_lab, fake = lab
    answer = the_lab.handle({"cmd": "degrade", "site": "iad", "delay_ms": 150, "loss": 0.05})
    assert answer["degraded"] == "iad"
    assert fake.shaped[-1]["iad"] | {"paths": None} == {
        "paths": None,
        "extra_ms": 150.0,
        "loss": 0.05,
        "dark": False,
    }
    assert fake.shaped[-1]["ams"]["extra_ms"] == 0.0


@pytest.mark.parametrize(
    ("req", "says"),
    [
        ([], "a request is a JSON object with a cmd, not []"),
        (1, "a request is a JSON object with a cmd, not 1"),
        ("status", "a request is a JSON object with a cmd, not 'status'"),
        (None, "a request is a JSON object with a cmd, not None"),
        ({}, "unknown command None (commands: status, fail, "),
        ({"cmd": 5}, "unknown command 5"),
        ({"cmd": "explode"}, "unknown command 'explode'"),
        ({"cmd": "fail"}, "fail needs site"),
        ({"cmd": "fail", "site": ["ams"]}, "site must be a string, not ['ams']"),
        ({"cmd": "fail", "site": "ams", "now": True}, "fail takes no field 'now'"),
        ({"cmd": "fail", "site": "mars"}, "no site 'mars' (sites: ams, iad, sin)"),
        ({"cmd": "fail", "site": "uni"}, "no site 'uni'"),
        ({"cmd": "restore", "name": "core"}, "no site or region 'core'"),
        ({"cmd": "cut", "region": "ams"}, "no region 'ams'"),
        ({"cmd": "status", "measure": "yes"}, "measure must be true or false, not 'yes'"),
        ({"cmd": "bump-serial", "sites": []}, "sites must be a list of names, or null"),
        ({"cmd": "bump-serial", "sites": ["ams", 3]}, "sites must be a string, not 3"),
        ({"cmd": "bump-serial", "sites": ["ams", "x" * 500]}, "no site 'xxxxx"),
    ],
)
def test_a_request_that_is_not_a_command_is_refused_in_one_line(
    lab: tuple[Lab, FakeWorld], req: object, says: str
) -> None:
    """Whatever the request, a short one-line refusal, and nothing changed."""
    the_lab, fake = lab
    with pytest.raises(BadRequest) as err:
        the_lab.handle(req)
    msg = str(err.value)
    assert msg.startswith(says) and "\n" not in msg and len(msg) < 200, msg
    assert fake.shaped == [] and fake.serials == {} and not fake.links_down


def test_restore_on_a_healthy_site_or_region_changes_nothing(lab: tuple[Lab, FakeWorld]) -> None:
    """``restore ams`` with ams up, ``restore sa-east`` with sa-east not cut: nothing to
    undo, so nothing done, and the answer says so (it said "ams restored")."""
    the_lab, fake = lab
    for name in ("ams", "uni", "sa-east"):
        answer = the_lab.handle({"cmd": "restore", "name": name})
        assert answer == {"restored": name, "changed": False, "converges_at": None}
    assert fake.shaped == [] and the_lab.history == []


def test_fail_withdraws_after_the_convergence_delay_and_restore_announces(
    lab: tuple[Lab, FakeWorld],
) -> None:
    """``fail sin``: dark at once, ap-south still routed to sin until the convergence
    delay has passed, then to ams; ``restore sin``: lit at once, announced later. A
    second ``fail`` or ``restore`` on the way changes nothing and moves no timer."""
    the_lab, fake = lab
    failed = the_lab.handle({"cmd": "fail", "site": "sin"})
    assert failed["changed"] and fake.shaped[-1]["sin"]["dark"]
    assert fake.routes["ap-south"] == "sin"
    again = the_lab.handle({"cmd": "fail", "site": "sin"})
    assert again == {"failed": "sin", "changed": False, "converges_at": failed["converges_at"]}
    _wait(lambda: fake.routes["ap-south"] == "ams", "ap-south moved to ams")
    assert time.time() >= failed["converges_at"]
    assert {r: s for r, s in fake.routes.items() if r != "ap-south"} == {
        r: s for r, s in NEAREST.items() if r != "ap-south"
    }
    restored = the_lab.handle({"cmd": "restore", "name": "sin"})
    assert restored["changed"] and not fake.shaped[-1]["sin"]["dark"]
    shaped = len(fake.shaped)
    again = the_lab.handle({"cmd": "restore", "name": "sin"})
    assert again == {
        "restored": "sin",
        "changed": False,
        "converges_at": restored["converges_at"],
    }
    assert len(fake.shaped) == shaped
    _wait(lambda: fake.routes["ap-south"] == "sin", "ap-south back at sin")
    assert [e["what"] for e in the_lab.history] == ["failed", "withdrawn", "restored", "announced"]


def test_restore_before_the_withdrawal_moves_no_route(lab: tuple[Lab, FakeWorld]) -> None:
    the_lab, fake = lab
    the_lab.handle({"cmd": "fail", "site": "sin"})
    the_lab.handle({"cmd": "restore", "name": "sin"})
    time.sleep(CONVERGENCE_S * 2)
    assert fake.routes == NEAREST
    assert [e["what"] for e in the_lab.history] == ["failed", "restored"]


def test_cut_and_bump_serial(lab: tuple[Lab, FakeWorld]) -> None:
    the_lab, fake = lab
    assert the_lab.handle({"cmd": "cut", "region": "sa-east"})["changed"]
    assert not the_lab.handle({"cmd": "cut", "region": "sa-east"})["changed"]
    assert fake.links_down == {"sa-east"}
    assert the_lab.handle({"cmd": "restore", "name": "sa-east"})["changed"]
    assert fake.links_down == set()
    a = the_lab.handle({"cmd": "bump-serial", "sites": ["ams", "iad"]})
    assert a["serial"] == FIRST_SERIAL + 1
    assert fake.serials == dict.fromkeys(["ams", "iad"], FIRST_SERIAL + 1)
    b = the_lab.handle({"cmd": "bump-serial"})
    assert set(fake.serials.values()) == {FIRST_SERIAL + 2} and len(b["sites"]) == 4


def test_down_tears_down_once_and_takes_no_other_command(lab: tuple[Lab, FakeWorld]) -> None:
    the_lab, fake = lab
    assert the_lab.handle({"cmd": "down"}) == {"down": True}
    assert the_lab.stopped.is_set() and fake.teardowns == 1
    with pytest.raises(BadRequest, match="the lab is going down"):
        the_lab.handle({"cmd": "fail", "site": "sin"})
    assert the_lab.handle({"cmd": "down"}) == {"down": True}
    the_lab.close()
    assert fake.teardowns == 1


def _wait(ok: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


# ----------------------------------------------------------------------------- the socket


@dataclass
class Daemon:
    lab: Lab
    fake: FakeWorld
    server: ControlServer
    thread: threading.Thread
    log: io.StringIO  # the server's log (the daemon's is its log file)

    @property
    def path(self) -> Path:
        return self.server.path


READ_TIMEOUT_S = 3.0


@contextlib.contextmanager
def serving(run_dir: Path, **kw: Any) -> Iterator[Daemon]:
    """The daemon's control server on ``run_dir/control.sock``, over a fake world."""
    the_lab, fake = new_lab(run_dir)
    kw.setdefault("read_timeout_s", READ_TIMEOUT_S)
    log = io.StringIO()
    server = ControlServer(run_dir / "control.sock", the_lab.handle, log=log, **kw)
    thread = threading.Thread(target=server.serve, args=(the_lab.stopped,), daemon=True)
    thread.start()
    try:
        yield Daemon(the_lab, fake, server, thread, log)
    finally:
        the_lab.stopped.set()
        thread.join(READ_TIMEOUT_S + 5)
        assert not thread.is_alive()


@pytest.fixture
def daemon(run_dir: Path) -> Iterator[Daemon]:
    with serving(run_dir) as d:
        yield d


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    return s


def read_answer(s: socket.socket) -> tuple[bytes, bool]:
    """The answer line, and whether the server then closed the connection (a close
    with the request unread, past a cap, resets it)."""
    data = b""
    while b"\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    line, _, rest = data.partition(b"\n")
    try:
        return line, not rest and s.recv(1) == b""
    except ConnectionResetError:
        return line, not rest


def ask(path: Path, data: bytes) -> dict[str, Any]:
    """Send ``data`` on a new connection; the one-line answer (the server closes)."""
    with connect(path) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # a busy daemon answers and closes before it reads
        line, closed = read_answer(s)
    assert closed and line, (data[:80], line)
    answer: dict[str, Any] = json.loads(line)
    return answer


def test_half_a_line_holds_up_no_other_client(daemon: Daemon) -> None:
    """A client that sends half a line and waits: every other command is answered
    meanwhile, ``down`` included, and it gets a one-line error when its time is up.
    (The daemon served one client at a time, reading without a limit: it blocked.)"""
    with connect(daemon.path) as slow:
        slow.sendall(b'{"cmd": "sta')
        started = time.monotonic()
        assert ask(daemon.path, b'{"cmd": "status", "measure": false}\n')["ok"]
        assert ask(daemon.path, b'{"cmd": "fail", "site": "sin"}\n')["failed"] == "sin"
        assert ask(daemon.path, b'{"cmd": "down"}\n') == {"ok": True, "down": True}
        assert daemon.fake.teardowns == 1
        line, closed = read_answer(slow)
        assert time.monotonic() - started >= READ_TIMEOUT_S  # not cut off before its time
    assert closed
    assert json.loads(line) == {
        "ok": False,
        "error": f"no whole request line within {READ_TIMEOUT_S:g} s",
    }
    daemon.thread.join(READ_TIMEOUT_S + 5)
    assert not daemon.thread.is_alive()  # down ended the server


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"[]", "a request is a JSON object with a cmd, not []"),
        (b"1", "a request is a JSON object with a cmd, not 1"),
        (b"null", "a request is a JSON object with a cmd, not None"),
        (b"not json", "a request is one line of JSON: Expecting value"),
        (b"\xff\xfe{}", "a request is one line of JSON: "),
        (b"[" * 50_000, "a request is one line of JSON: "),
        (b"", "a request is one line of JSON: "),
        (b'{"cmd": 5}', "unknown command 5"),
        (b'{"cmd": "degrade", "site": "ams", "delay_ms": NaN}', "delay_ms must be a number"),
        (b'{"cmd": "degrade", "site": "ams", "delay_ms": "5"}', "delay_ms must be a number"),
        (b'{"cmd": "degrade", "site": ["ams"], "delay_ms": 5}', "site must be a string"),
        (b'{"cmd": "bump-serial", "sites": {"ams": 1}}', "sites must be a list of names"),
    ],
)
def test_a_line_that_is_no_request_gets_a_one_line_error(
    daemon: Daemon, line: bytes, says: str
) -> None:
    """``[]``, ``1``, not JSON, wrong types: one line that says what is wrong (these
    closed the connection with no answer, from an uncaught error), and the daemon goes
    on answering."""
    answer = ask(daemon.path, line + b"\n")
    assert answer["ok"] is False and answer["error"].startswith(says), answer
    assert daemon.fake.shaped == []
    assert ask(daemon.path, b'{"cmd": "status", "measure": false}\n')["ok"]


def test_a_huge_line_is_not_read_whole(daemon: Daemon) -> None:
    """200 MB without a newline: the daemon reads the line only up to its cap, answers
    one line, and closes; the sender gets nowhere near 200 MB through."""
    total, sent = 200 * 2**20, 0
    with connect(daemon.path) as s:
        chunk = b"x" * 2**20
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total:
                sent += s.send(chunk)
        line, closed = read_answer(s)
    assert closed
    assert json.loads(line) == {
        "ok": False,
        "error": f"a request line is at most {MAX_LINE} bytes",
    }
    assert sent < 16 * 2**20, sent  # the cap and the socket's buffers, no more
    assert ask(daemon.path, b'{"cmd": "status", "measure": false}\n')["ok"]


def test_a_failure_of_the_world_is_one_line(daemon: Daemon) -> None:
    """A command that fails in the world (knotc refusing, say) answers one line with
    what failed, and the daemon goes on."""
    daemon.fake.fail_serial = subprocess.CalledProcessError(1, ["knotc", "zone-reload"])
    answer = ask(daemon.path, b'{"cmd": "bump-serial", "sites": ["ams"]}\n')
    assert answer == {
        "ok": False,
        "error": "CalledProcessError: Command '['knotc', 'zone-reload']' returned non-zero "
        "exit status 1.",
    }
    log = daemon.log.getvalue()
    assert "Traceback" in log and "bump-serial" in log  # the daemon's log has the rest
    daemon.fake.fail_serial = None
    assert ask(daemon.path, b'{"cmd": "bump-serial", "sites": ["ams"]}\n')["ok"]


def test_clients_beyond_the_cap_are_told_to_wait(run_dir: Path) -> None:
    with serving(run_dir, max_clients=2) as d:
        held = [connect(d.path) for _ in range(2)]
        try:
            for s in held:
                s.sendall(b"{")
            _wait(lambda: len(d.server.clients) == 2, "two clients served")
            answer = ask(d.path, b'{"cmd": "status"}\n')
            assert answer == {"ok": False, "error": "busy: 2 clients are being served; try again"}
        finally:
            for s in held:
                s.close()
        _wait(lambda: not d.server.clients, "the held clients gone")
        assert ask(d.path, b'{"cmd": "status", "measure": false}\n')["ok"]


# ----------------------------------------------------------------------------- the CLI


def lab_cli(daemon: Daemon, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``popwatch-lab ARGV`` against the daemon; its exit status and output (both)."""
    with pytest.raises(SystemExit) as exit:
        cli.main(["--run-dir", str(daemon.path.parent), *argv])
    out = capsys.readouterr()
    return int(exit.value.code or 0), out.out + out.err


def test_the_cli_says_when_there_was_nothing_to_do(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """``restore ams`` on a healthy site says there was nothing to restore (it said "ams
    restored"); a second ``fail`` says the site is failed already."""
    assert lab_cli(daemon, "restore", "ams", capsys=capsys) == (
        0,
        "ams is not failed or degraded: nothing to restore\n",
    )
    assert lab_cli(daemon, "restore", "sa-east", capsys=capsys) == (
        0,
        "sa-east is not cut off or steered: nothing to restore\n",
    )
    code, out = lab_cli(daemon, "fail", "sin", capsys=capsys)
    assert code == 0 and out.startswith("sin failed; routes move in ")
    code, out = lab_cli(daemon, "fail", "sin", capsys=capsys)
    assert code == 0 and out.startswith("sin is failed already; routes move in ")
    code, out = lab_cli(daemon, "restore", "sin", capsys=capsys)
    assert code == 0 and out == "sin restored\n"  # before the withdrawal: no route moves
    assert lab_cli(daemon, "degrade", "iad", "--delay", "150", capsys=capsys) == (
        0,
        "iad degraded: +150 ms round trip, 0% loss\n",
    )
    assert lab_cli(daemon, "restore", "iad", capsys=capsys) == (0, "iad restored\n")


def test_the_cli_prints_the_daemons_refusal_in_one_line(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.fake.fail_serial = RuntimeError("knotc: no such zone")
    code, out = lab_cli(daemon, "bump-serial", capsys=capsys)
    assert (code, out) == (1, "popwatch-lab: RuntimeError: knotc: no such zone\n")
