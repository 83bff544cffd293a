"""The README's quick starts work as written, on a fresh copy, as a plain user.

The commands are read from the README itself, not copied here, so the README cannot
drift from what is tested. They run in a copy of the repository (what a user clones),
with a fresh home and data directory, as ``nobody`` with a plain user's PATH (Debian's
``python3``). ``nobody`` gets only the capability to read and search directories, so
that it can read the test machine's files under ``/root``; it can write nowhere it
could not. Lines marked ``# as root`` are the root part the README names: the test
checks that what they install is installed (``.ci/run`` installs it), and does the
rest of them itself, on its own copies (it does not edit this machine's
``/etc/influxdb``, nor start the packaged service). ``. .venv/bin/activate`` is kept
for the lines after it, as a shell would. ``pip install .`` reaches the package index,
as it does for a user.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.procs import AS_NOBODY
from support.servers import free_port

README = Path(__file__).parent.parent / "README.md"
REPO = README.parent
DEBIAN_INFLUXDB_CONF = Path("/etc/influxdb/influxdb.conf")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running as nobody needs root")


def sh_block(section: str) -> list[str]:
    """The commands of the first ``sh`` block under the README heading ``section``,
    continuation lines joined."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no sh block under {section!r}"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip()]


def sh_blocks(section: str) -> list[list[str]]:
    """Every ``sh`` block of the README section ``section`` (up to the next ``##``)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S)
    return [
        [ln.strip() for ln in b.replace("\\\n", " ").splitlines() if ln.strip()] for b in blocks
    ]


def _clone(dest: Path) -> list[str]:
    """What ``git clone`` of this tree gives (tracked and new files, nothing ignored);
    the files' names."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    names = []
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
            names.append(name.decode())
    return names


def command_of(line: str) -> str:
    """The command of a README line, without its comment: from the first `` #`` outside
    quotes (sed's ``# bind-address`` is inside them)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].strip()
    return line.strip()


class Shell:
    """The README's lines, one by one, as nobody in the clone."""

    def __init__(self, tmp_path: Path) -> None:
        self.clone, self.home = tmp_path / "popwatch", tmp_path / "home"
        self.clone.mkdir()
        self.home.mkdir()
        self.cloned = _clone(self.clone)
        for path in (tmp_path, self.clone, self.home):
            path.chmod(0o777)
        subprocess.run(
            ["chown", "-R", "nobody:nogroup", str(self.clone), str(self.home)], check=True
        )
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_", "REQUESTS_"))},
        }
        self.background: list[subprocess.Popen[str]] = []

    def activate(self) -> None:
        venv = self.clone / ".venv"
        self.env = {**self.env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin:{self.env['PATH']}"}

    def run(self, line: str) -> str:
        done = subprocess.run(
            [*AS_NOBODY, "bash", "-c", line],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        return done.stdout

    def start(self, line: str, ready: str, within: float = 60) -> subprocess.Popen[str]:
        """A server: started, and waited for until a line of its output matches
        ``ready``."""
        proc = subprocess.Popen(
            [*AS_NOBODY, "bash", "-c", "exec env " + line],  # env: VAR=value lines too
            cwd=self.clone,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.background.append(proc)
        lines: queue.Queue[str] = queue.Queue()

        def pump(stream: Any = proc.stdout) -> None:  # its output, read to its end
            for out in stream:
                lines.put(out)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        seen = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                out = lines.get(timeout=left)
            except queue.Empty:
                break
            if not out:
                break
            seen.append(out)
            if re.search(ready, out):
                return proc
        raise AssertionError(f"{line}: not ready: {''.join(seen)}")

    def close(self) -> None:
        for proc in reversed(self.background):
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def check_installed(line: str) -> None:
    """``apt-get install -y PACKAGES``: each is installed (``.ci/run`` installs them)."""
    words = shlex.split(command_of(line))
    assert words[:3] == ["apt-get", "install", "-y"], line
    for package in words[3:]:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        ).stdout
        assert "install ok installed" in status, package


@needs_root
def test_the_probe_on_its_own_as_written(tmp_path: Path) -> None:
    """ "The probe on its own": install, start the demo Knot, and `once` against it, each
    command exactly as the README has it. The last one prints five answered queries
    with the site's NSID and kernel timestamps."""
    commands = sh_block("The probe on its own")
    assert command_of(commands[0]).startswith("apt-get install -y ")
    assert "# as root" in commands[0]
    shell = Shell(tmp_path)
    out = ""
    try:
        for line in commands:
            command = command_of(line)
            if "# as root" in line:  # the root part: .ci/run installed it
                check_installed(line)
            elif command == ". .venv/bin/activate":
                shell.activate()
            elif command.endswith("&"):  # a server: wait for the line that says it is up
                shell.start(command[:-1], "serving")
            else:
                out = shell.run(command)
    finally:
        shell.close()
    assert "5 queries, 5 answered, 0 without answer" in out, out
    rows = [r for r in out.splitlines() if "NOERROR" in r]
    assert len(rows) == 5, out
    assert all("lab-fra1" in r and r.rstrip().endswith("kernel") for r in rows), out


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process under it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = {pid}, [pid]
    while todo:
        here = todo.pop()
        for child, parent in parents.items():
            if parent == here and child not in found:
                found.add(child)
                todo.append(child)
    return found


def listening(pids: set[int]) -> dict[int, list[str]]:
    """The TCP addresses each of ``pids`` listens on, from /proc/net/tcp{,6}: the
    sockets in LISTEN, matched to the processes by their inodes."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found: dict[int, list[str]] = {}
    for table, family in (("tcp", 4), ("tcp6", 6)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = ipaddress.ip_address(raw if family == 6 else raw[:4])
            found.setdefault(inodes[fields[9]], []).append(f"{addr}:{int(hexport, 16)}")
    return found


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _influx_rows(url: str, q: str, db: str) -> list[list[Any]]:
    import json

    query = urllib.parse.urlencode({"db": db, "q": q})
    try:
        with urllib.request.urlopen(f"{url}/query?{query}", timeout=5) as resp:
            result = json.load(resp)["results"][0]
    except OSError:
        return []
    return [row for series in result.get("series", []) for row in series["values"]]


def _wait(what: Callable[[], list[list[Any]]], within: float) -> list[list[Any]]:
    deadline = time.monotonic() + within
    rows = what()
    while not rows and time.monotonic() < deadline:
        time.sleep(1)
        rows = what()
    return rows


@needs_root
def test_without_docker_as_written(tmp_path: Path) -> None:
    """ "Without Docker": the README's edit of Debian's influxdb.conf binds its HTTP API
    to loopback (was: `*:8086`, no auth); an influxd run with Debian's config so edited
    (on its own data directory and free ports, so as not to touch the machine's) listens
    on loopback alone. Then the venv, the demo Knot, `probes add`, the collector with
    the local targets file and the probe run as nobody, each as written (the ports
    moved to free ones): the probe's measurements of the local Knot, with its NSID as
    the site, reach InfluxDB; nothing of it listens beyond loopback; and what the
    commands made in the clone is in .gitignore."""
    blocks = sh_blocks("Without Docker")
    root_block, user_block = blocks[0], blocks[-1]
    assert any("targets-local.yaml" in ln for ln in user_block)
    assert not any(
        "root-servers" in ln or "deploy/targets.yaml" in command_of(ln) for ln in user_block
    )

    # the root part: packages installed, and the README's edit on a copy of the config
    check_installed(root_block[0])
    edit = next(ln for ln in root_block if DEBIAN_INFLUXDB_CONF.name in ln and "sed" in ln)
    assert "# as root" in edit
    conf = tmp_path / "influxdb.conf"
    shutil.copy(DEBIAN_INFLUXDB_CONF, conf)
    assert tomllib.loads(conf.read_text())["http"].get("bind-address") is None  # *:8086
    subprocess.run(
        ["bash", "-c", command_of(edit).replace(str(DEBIAN_INFLUXDB_CONF), str(conf))],
        check=True,
    )
    assert tomllib.loads(conf.read_text())["http"]["bind-address"] == "127.0.0.1:8086"
    start = next(ln for ln in root_block if "systemctl" in ln)
    assert "runuser -u influxdb -- influxd -config /etc/influxdb/influxdb.conf &" in start

    # that config, on a data directory and ports of its own, never the machine's
    http_port, rpc_port = free_port(), free_port()
    data = tmp_path / "influxdb"
    text = conf.read_text().replace("/var/lib/influxdb", str(data))
    text = text.replace(
        'bind-address = "127.0.0.1:8086"', f'bind-address = "127.0.0.1:{http_port}"'
    )
    text = text.replace(
        '# bind-address = "127.0.0.1:8088"', f'bind-address = "127.0.0.1:{rpc_port}"', 1
    )
    assert "reporting-enabled = false" in text  # Debian's: no report leaves the machine
    conf.write_text(text)
    influx_log = open(tmp_path / "influxd.log", "wb")  # noqa: SIM115
    influxd = subprocess.Popen(
        ["influxd", "-config", str(conf)], stdout=influx_log, stderr=subprocess.STDOUT
    )
    influx_url = f"http://127.0.0.1:{http_port}"
    shell = Shell(tmp_path)
    collector_port, admin_port = free_port(), free_port()
    try:
        from popwatch_lab.influx import wait_ready

        wait_ready(influx_url, influxd, tmp_path / "influxd.log")
        for line in root_block[1:]:
            command = command_of(line)
            if "# as root" in line:
                continue  # done above, on the copy
            shell.run(
                command.replace("127.0.0.1:8086", f"127.0.0.1:{http_port}").replace(
                    ":8086", f":{http_port}"
                )
            )

        token = ""
        probe: subprocess.Popen[str] | None = None
        for line in user_block:
            command = command_of(line)
            command = command.replace("127.0.0.1:8086", f"127.0.0.1:{http_port}")
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{collector_port}")
            if command == ". .venv/bin/activate":
                shell.activate()
            elif "popwatch-collector run" in command:
                command = command.replace(
                    "POPWATCH_LISTEN=",
                    f"POPWATCH_ADMIN_LISTEN=127.0.0.1:{admin_port} POPWATCH_LISTEN=",
                )
                assert command.endswith("&")
                shell.start(command[:-1], r"collector listening on")
            elif command.endswith("&"):
                shell.start(command[:-1], "serving")
            elif "popwatch-probe run" in command:
                assert token.startswith("pw1_")
                probe = shell.start(
                    command.replace("POPWATCH_TOKEN=pw1_...", f"POPWATCH_TOKEN={token}"),
                    r".",  # its first log line; the measurements are awaited below
                )
            else:
                out = shell.run(command)
                if "probes add" in command:
                    token = out.strip()
        assert probe is not None

        rows = _wait(
            lambda: _influx_rows(
                influx_url,
                "SELECT rtt_ms, site FROM dns WHERE target = 'local-knot' AND rcode = 'NOERROR'",
                "popwatch",
            ),
            within=60,
        )
        assert rows and all(r[2] == "lab-fra1" for r in rows), rows

        pids = _descendants(influxd.pid)
        for proc in shell.background:
            pids |= _descendants(proc.pid)
        ports = listening(pids)
        assert ports.get(influxd.pid), ports  # its HTTP API and its RPC
        assert f"127.0.0.1:{http_port}" in ports[influxd.pid]
        beyond = {pid: [a for a in addrs if not _is_loopback(a)] for pid, addrs in ports.items()}
        assert not any(beyond.values()), beyond
    finally:
        shell.close()
        influxd.terminate()
        influxd.wait(15)
        influx_log.close()

    # what the commands made in the clone is ignored, so `git status` stays clean
    made = sorted(
        str(p.relative_to(shell.clone)) + ("/" if p.is_dir() else "")
        for p in shell.clone.rglob("*")
        if (p.is_file() and str(p.relative_to(shell.clone)) not in shell.cloned)
        or (p.is_dir() and not any(p.iterdir()))
    )
    assert {m.split("/")[0] for m in made} >= {".venv", "data", "probe-data"}, made
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(made) + "\n",
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert sorted(set(made) - set(ignored)) == [], "made by the README's commands, not ignored"
