"""The README's quick start works as written, on a fresh copy, as a plain user.

The commands are read from the README itself, not copied here, so the README cannot
drift from what is tested. They run in a copy of the repository (what a user clones),
with a fresh home and data directory, as ``nobody`` with a plain user's PATH (Debian's
``python3``). ``nobody`` gets only the capability to read and search directories, so
that it can read the test machine's files under ``/root``; it can write nowhere it
could not. Lines that say ``sudo`` are the root part the README names: the test checks
that what they install is installed (``.ci/run`` installs it) and runs the rest.
``pip install .`` reaches the package index, as it does for a user.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from support.procs import AS_NOBODY

README = Path(__file__).parent.parent / "README.md"
REPO = README.parent


def sh_block(section: str) -> list[str]:
    """The commands of the first ``sh`` block under the README heading ``section``,
    continuation lines joined."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no sh block under {section!r}"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip()]


def _clone(dest: Path) -> None:
    """What ``git clone`` of this tree gives (tracked and new files, nothing ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


@pytest.mark.skipif(os.geteuid() != 0, reason="running as nobody needs root")
def test_the_probe_on_its_own_as_written(tmp_path: Path) -> None:
    """ "The probe on its own": install, start the demo Knot, and `once` against it, each
    command exactly as the README has it. The last one prints five answered queries
    with the site's NSID and kernel timestamps."""
    commands = sh_block("The probe on its own")
    assert commands[0].startswith("sudo apt-get install -y ")
    clone, home = tmp_path / "popwatch", tmp_path / "home"
    clone.mkdir()
    home.mkdir()
    _clone(clone)
    for path in (tmp_path, clone, home):
        path.chmod(0o777)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(clone), str(home)], check=True)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_", "REQUESTS_"))},
    }
    background: list[subprocess.Popen[str]] = []
    out = ""
    try:
        for command in commands:
            line = command.split("#", 1)[0].strip()
            if line.startswith("sudo "):  # the root part: .ci/run installed it
                packages = shlex.split(line)[4:]
                for package in packages:
                    status = subprocess.run(
                        ["dpkg-query", "-W", "-f=${Status}", package],
                        capture_output=True,
                        text=True,
                    ).stdout
                    assert "install ok installed" in status, package
                continue
            if line.endswith("&"):  # a server: wait for the line that says it is up
                proc = subprocess.Popen(
                    [*AS_NOBODY, "bash", "-c", "exec " + line[:-1]],
                    cwd=clone,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                background.append(proc)
                assert proc.stdout is not None
                first = proc.stdout.readline()
                assert "serving" in first, first
                continue
            done = subprocess.run(
                [*AS_NOBODY, "bash", "-c", line],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
            out = done.stdout
    finally:
        for proc in background:
            proc.terminate()
            proc.communicate(timeout=10)
    assert "5 queries, 5 answered, 0 without answer" in out, out
    rows = [r for r in out.splitlines() if "NOERROR" in r]
    assert len(rows) == 5, out
    assert all("lab-fra1" in r and r.rstrip().endswith("kernel") for r in rows), out
