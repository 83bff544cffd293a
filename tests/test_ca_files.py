"""A CA file that is missing, unreadable or not PEM is one line naming it when the
config loads or ``once`` starts, exit status 2, never a traceback at every fetch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from probe.config import load_config
from probe.configfile import ConfigError

PROBE = str(Path(sys.executable).parent / "popwatch-probe")


def test_run_refuses_a_target_whose_ca_file_is_missing_or_not_pem(tmp_path: Path) -> None:
    """An http and a dns target naming a CA that is not there, or not a certificate:
    the config does not load, and the line names the file and the target."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for ca, why in ((tmp_path / "nope.pem", "cannot read"), (junk, "cannot use")):
        conf = tmp_path / "probe.yaml"
        conf.write_text(
            "targets:\n"
            "  - {name: ok, topology: unicast, server: 127.0.0.1, queries: [{qname: a.}]}\n"
            f"  - {{kind: http, name: www, topology: unicast, url: 'https://a.test/', "
            f"tls_ca: '{ca}'}}\n"
        )
        with pytest.raises(ConfigError) as err:
            load_config(conf, env={})
        assert str(err.value).startswith(f"{conf}: targets[1].tls_ca: {why}"), err.value
        assert "(target www)" in str(err.value)
        out = subprocess.run(
            [PROBE, "run", "--config", str(conf)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr


def test_once_refuses_a_missing_ca_file_at_start(tmp_path: Path) -> None:
    """`once --https URL --tls-ca /nonexistent.pem` and `once --tls ... --tls-ca`: one
    line, exit 2, before any fetch (was: a traceback per fetch)."""
    for flags in (
        ["--https", "https://127.0.0.1:9/"],
        ["--server", "127.0.0.1:9", "--qname", "a.", "--tls"],
    ):
        out = subprocess.run(
            [PROBE, "once", *flags, "--tls-ca", str(tmp_path / "nope.pem"), "--count", "3"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, out
        assert out.stderr.strip() == (
            f"popwatch-probe once: --tls-ca: cannot read {tmp_path / 'nope.pem'}: "
            "No such file or directory"
        ), out.stderr
