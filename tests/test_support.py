"""The test support itself: a machine without the servers runs the pure tests and skips
the others with the reason, and under CI=true fails them instead (tests/support/need.py).

The real experiment runs pytest in a child process that cannot find any server: a
mount namespace of its own hides /usr/sbin (knotd, nsd; tests/support/servers.py adds
it to PATH itself, so a PATH without it would not do), and its PATH names an empty
directory (dnsdist, influxd, openssl). That needs root, or user namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import need as need_mod
from support.need import NotInstalled, need

REPO = Path(__file__).parent.parent
ABSENT = "popwatch-no-such-tool"
#: the pure tests, and one that needs Knot
PURE = ["tests/test_wire.py", "tests/test_dnswire.py", "tests/test_config.py"]
NEEDS_KNOT = "tests/test_dns_check.py::test_udp_tcp_soa_with_nsid"


def test_a_missing_tool_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """need() returns when the tools are there; with one missing it skips, saying what
    is missing and which package brings it."""
    need("sh")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=rf"^{ABSENT} is not installed: apt-get"):
        need("sh", ABSENT)
    monkeypatch.setattr(need_mod.shutil, "which", lambda tool: None)
    with pytest.raises(pytest.skip.Exception) as skipped:
        need("knotd", "knotc", "dnsdist")
    assert str(skipped.value) == (
        "knotd is not installed: apt-get install knot; "
        "dnsdist is not installed: apt-get install dnsdist"
    )


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_under_ci_a_missing_tool_fails(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    """With CI=true (or 1) a missing tool fails the test: .ci/run installs every one, so
    a skip there would hide a broken machine."""
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=rf"^{ABSENT} is not installed: .*CI is set"):
        need(ABSENT)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        need(ABSENT)


def test_outside_pytest_a_missing_tool_raises() -> None:
    """A benchmark or a server started by hand gets the same message as an exception
    (no pytest there to skip)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from support.need import need, NotInstalled\n"
        f"try:\n    need({ABSENT!r})\nexcept NotInstalled as e:\n    print('raised:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == f"raised: {ABSENT} is not installed: apt-get install {ABSENT}\n"
    assert issubclass(NotInstalled, RuntimeError)


def _without_servers(*argv: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """``argv`` in a mount namespace where /usr/sbin is empty, with a PATH of one empty
    directory: no knotd, nsd, dnsdist, influxd, openssl, alertmanager..."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    ns = [unshare, "--mount"] if os.geteuid() == 0 else [unshare, "--user", "-r", "--mount"]
    env = {"HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8", "PATH": "/nonexistent"}
    if ci:
        env["CI"] = "true"
    hide = "/usr/bin/mount -t tmpfs -o ro tmpfs /usr/sbin && "
    check = subprocess.run(
        [*ns, "/bin/sh", "-c", hide + "! test -e /usr/sbin/knotd"], env=env, capture_output=True
    )
    if check.returncode != 0:
        pytest.skip(f"cannot hide /usr/sbin here (root or user namespaces): {check.stderr!r}")
    return subprocess.run(
        [*ns, "/bin/sh", "-c", hide + 'exec "$0" "$@"', *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_servers_pure_tests_run_and_the_rest_is_skipped() -> None:
    """On a machine without Knot (or any server) conftest imports, the pure tests pass,
    and a test that needs Knot is skipped with the reason and the package."""
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
    out = _without_servers(*pytest_argv, *PURE, NEEDS_KNOT, ci=False)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed, " in summary and " skipped " in summary and "failed" not in summary
    assert "SKIPPED [4] tests/test_dns_check.py" in out.stdout
    assert "knotd is not installed: apt-get install knot" in out.stdout


def test_without_servers_under_ci_the_test_that_needs_one_fails() -> None:
    """The same machine with CI=true: the test that needs Knot fails, with the reason."""
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
    out = _without_servers(*pytest_argv, PURE[0], NEEDS_KNOT, ci=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "skipped" not in out.stdout.strip().splitlines()[-1]
    assert "4 errors" in out.stdout
    assert "Failed: knotd is not installed: apt-get install knot (CI is set" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
def test_the_web_hosts_ca_file_is_readable_by_the_user_it_is_printed_for() -> None:
    """`tests/support/web.py` (run as root) prints a `popwatch-probe once --tls-ca CA`
    for a plain user: that user can read the CA file (was: it lay in a 0700 directory of
    root's), and cannot read the key beside it. `nobody` here has no capability at all."""
    from support.web import WebLab

    lab = WebLab()
    try:
        lab.make_cert()
        plain = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        cert = subprocess.run([*plain, str(lab.cert)], capture_output=True, text=True)
        assert cert.returncode == 0, cert.stderr
        assert cert.stdout.startswith("-----BEGIN CERTIFICATE-----")
        key = subprocess.run([*plain, str(lab.key)], capture_output=True, text=True)
        assert key.returncode != 0 and "Permission denied" in key.stderr
    finally:
        lab.stop()
