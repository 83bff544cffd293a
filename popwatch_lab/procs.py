"""The lab's processes: started in a namespace, logged, recorded, and stopped by id.

Every process the lab starts is written to ``RUN/pids`` with its start time, so a
``down`` after a crashed daemon still finds exactly the lab's processes and no other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def sbin_on_path() -> None:
    """The daemons (knotd, influxd...) live in sbin, which a plain PATH may lack."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    for sbin in ("/usr/sbin", "/sbin"):
        if sbin not in path:
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + sbin


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Procs:
    """The processes of one lab, in start order."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tmp = run_dir / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.started: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        netns: str | None = None,
        env: dict[str, str] | None = None,
        ready: bool = False,
        timeout: float = 30.0,
    ) -> Proc:
        """Start ``argv`` (in ``netns``); with ``ready``, wait for it to print ``ready``."""
        log = self.logs / f"{name}.log"
        # any temporary file of the lab's processes lives (and goes) with the run dir
        env = {**(os.environ if env is None else env), "TMPDIR": str(self.tmp)}
        full = ["ip", "netns", "exec", netns, *argv] if netns else argv
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready else out,
                stderr=out,
                env=env,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        with open(self.run_dir / "pids", "a") as f:
            f.write(f"{popen.pid} {start_time(popen.pid)} {name}\n")
        if ready:
            assert popen.stdout is not None
            line = popen.stdout.readline()
            popen.stdout.close()
            if line.strip() != b"ready":
                raise RuntimeError(f"{name} did not start: {log.read_text()[-1500:]}")
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc.alive:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def stop_all(self) -> None:
        """Every process, the last started first."""
        for proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()


def kill_recorded(run_dir: Path, grace: float = 5.0) -> list[str]:
    """Stop the processes ``RUN/pids`` lists that still run as the same process (same
    start time): SIGTERM, then SIGKILL after ``grace``. Their names."""
    pids_file = run_dir / "pids"
    if not pids_file.exists():
        return []
    live: dict[int, str] = {}
    for line in pids_file.read_text().splitlines():
        pid_s, started, name = line.split(" ", 2)
        pid = int(pid_s)
        if started != "None" and start_time(pid) == int(started):
            live[pid] = name
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(start_time(p) is not None for p in live):
        time.sleep(0.1)
    for pid in live:
        if start_time(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return list(live.values())
