"""The popwatch-probe command, run as a real process against a real Knot."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

from support import servers

# the installed console script, next to this interpreter (CI tests the installed code)
PROBE = [str(Path(sys.executable).parent / "popwatch-probe")]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=timeout)


def test_once_json_100_records_with_nsid(knot: servers.Knot) -> None:
    """`once --nsid --count 100 --json` prints 100 wire records with site and kernel stamps."""
    before = knot.queries()
    out = run(
        "once",
        "--server",
        f"127.0.0.1:{knot.port}",
        "--qname",
        "www.example.test",
        "--nsid",
        "--count",
        "100",
        "--interval",
        "0.005",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 100
    records = [json.loads(line) for line in lines]
    assert all(r["site"] == "knot-fra1" for r in records)
    assert all(r["timestamping"] == "kernel" for r in records)
    # every answer came within once's 2 s timeout (a later one is TIMEOUT); loopback
    # answers take well under a millisecond, so even on a loaded machine, where a few
    # wait for Knot to be scheduled, the median stays far below 50 ms
    assert all(r["kind"] == "dns" and 0 < r["rtt_ms"] < 2000 for r in records)
    assert statistics.median(r["rtt_ms"] for r in records) < 50
    assert knot.queries() - before == 100


def test_once_table_and_summary(knot: servers.Knot) -> None:
    """The default output is a table with one row per query and a summary line."""
    out = run(
        "once",
        "--server",
        f"[::1]:{knot.port}",
        "--qname",
        "example.test",
        "--tcp",
        "--chaos",
        "--count",
        "3",
        "--interval",
        "0",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "server", "proto", "rcode"]
    assert len(lines) == 5
    assert all("knot-id-fra1" in line and "2026112501" in line for line in lines[1:4])
    assert lines[4].startswith("3 queries, 3 answered, 0 without answer; rtt_ms min")


def test_once_no_answer_exits_1() -> None:
    """When no query is answered, `once` says so and exits 1."""
    port = servers.free_port()
    out = run(
        "once",
        "--server",
        f"127.0.0.1:{port}",
        "--qname",
        "example.test",
        "--count",
        "2",
        "--interval",
        "0",
    )
    assert out.returncode == 1
    assert "NETERR" in out.stdout and "refused: " in out.stdout
    assert "2 queries, 0 answered, 2 without answer" in out.stdout


def test_once_bad_arguments_exit_2() -> None:
    """Bad arguments are one line on stderr and exit 2."""
    out = run("once", "--server", "[::1", "--qname", "example.test")
    assert out.returncode == 2
    assert out.stderr.strip() == "popwatch-probe once: '[::1': missing ']'"
    out = run("once", "--server", "127.0.0.1", "--qname", "example.test", "--qtype", "SPF")
    assert out.returncode == 2 and "invalid choice: 'SPF'" in out.stderr


def test_once_usage_errors_print_onces_usage() -> None:
    """A figure `once` refuses after parsing (--count 0, a negative --interval) prints
    `once`'s usage, not the top level's (was: `usage: popwatch-probe [-h] [--version]
    COMMAND ...`), and exits 2."""
    for flags in (["--count", "0"], ["--interval", "-1"], ["--timeout", "0"]):
        out = run("once", "--server", "127.0.0.1", "--qname", "example.test", *flags)
        assert out.returncode == 2, out
        assert out.stderr.startswith("usage: popwatch-probe once "), out.stderr
        assert "popwatch-probe once: error: " in out.stderr, out.stderr


def test_help_teaches() -> None:
    """--help of each command explains and shows examples."""
    for cmd in ("once", "run"):
        out = run(cmd, "--help")
        assert out.returncode == 0
        assert "examples:" in out.stdout
    assert "rtt_ms is the time between" in run("once", "--help").stdout


def test_example_command_prints_the_example_config() -> None:
    """`popwatch-probe example` prints probe/example.yaml."""
    out = run("example")
    assert out.returncode == 0
    assert out.stdout == (Path(__file__).parent.parent / "probe" / "example.yaml").read_text()


def test_run_bad_targets_file_is_one_line(tmp_path: Path) -> None:
    """`run` with an invalid targets file prints one line naming file, key and fault."""
    bad = Path(__file__).parent / "data" / "config" / "invalid-port.yaml"
    out = run("run", "--targets", str(bad))
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == f"popwatch-probe: {bad}: targets[0].port: expected an integer <= 65535, got 70000"
    )


def test_run_schedules_host_name_per_family_and_stops_on_sigterm(
    knot: servers.Knot, tmp_path: Path
) -> None:
    """`run` resolves a host name to A and AAAA series, measures on schedule, stops cleanly."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"""targets:
  - name: by-name
    topology: anycast
    server: ns1.example.test
    port: {knot.port}
    interval: 1
    timeout: 0.5
    transports: [udp, tcp]
    queries: [{{qname: example.test, qtype: SOA}}]
"""
    )
    conf = tmp_path / "probe.yaml"
    metrics_port = servers.free_port(socket.SOCK_STREAM)
    conf.write_text(
        f"id: test-probe\nresolver: 127.0.0.1:{knot.port}\n"
        f"metrics_listen: 127.0.0.1:{metrics_port}\n"
    )
    output = tmp_path / "out.jsonl"
    before = knot.queries()
    proc = subprocess.Popen(
        [*PROBE, "run", "--config", str(conf), "--targets", str(targets), "--output", str(output)],
        stderr=subprocess.PIPE,
        text=True,
    )

    def key(r: dict[str, object]) -> object:
        return (r["server"], r["family"], r["transport"])

    # every series has run three times (1 s interval), however slowly the probe started
    servers.wait_for_records(
        output,
        lambda rs: (
            len({key(r) for r in rs}) == 4
            and all(sum(key(r) == k for r in rs) >= 3 for k in {key(r) for r in rs})
        ),
    )
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    records = [json.loads(x) for x in output.read_text().splitlines()]
    assert {key(r) for r in records} == {
        ("127.0.0.1", 4, "udp"),
        ("127.0.0.1", 4, "tcp"),
        ("::1", 6, "udp"),
        ("::1", 6, "tcp"),
    }
    # each series runs once a second: no run skipped or doubled, none stretched by a
    # measurement. A run's own lateness (a loaded machine wakes the loop late) moves it
    # off the dot without moving the next one: the scheduler's exact, non-accumulating
    # grid is held to 1e-6 s with simulated time in tests/test_scheduler.py
    gaps = servers.series_spacing(records, key)
    assert gaps and all(0.5 < g < 1.5 for g in gaps), gaps
    assert abs(statistics.median(gaps) - 1.0) < 0.05, gaps
    assert all(r["rcode"] == "NOERROR" and r["site"] == "knot-fra1" for r in records)
    # the server saw the measurements plus the A and AAAA lookups of the host name
    assert knot.queries() - before == len(records) + 2
    assert "probe test-probe: 1 targets, 4 series" in err
    assert (
        'popwatch_probe_measurements_total{kind="dns",outcome="NOERROR",transport="udp"}' in metrics
    )
    assert "popwatch_probe_series 4.0" in metrics
    assert "popwatch_probe_schedule_lag_seconds_bucket" in metrics
    assert f"stopped after {len(records)} measurements" in err


HEALTHCHECK = str(Path(sys.executable).parent / "popwatch-healthcheck")


def test_healthcheck_teaches_and_refuses_a_bad_option() -> None:
    """`popwatch-healthcheck --help` says what it asks and what its exit means; a bad
    option is a usage error, exit 2 (was: both printed nothing and exited 0 against a
    healthy listener). `--url` asks a real server on loopback: 200 is 0, a closed port 1."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    out = subprocess.run([HEALTHCHECK, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "POPWATCH_METRICS_LISTEN" in out.stdout and "exit status: 0" in out.stdout
    assert "examples:" in out.stdout

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        bad = subprocess.run(
            [HEALTHCHECK, "--bogus"],
            env={"POPWATCH_HEALTH_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2, bad
        assert "unrecognized arguments: --bogus" in bad.stderr
        assert "usage: popwatch-healthcheck" in bad.stderr
        ok = subprocess.run([HEALTHCHECK, "--url", url], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = subprocess.run(
        [HEALTHCHECK, "--url", f"http://127.0.0.1:{port}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1 and "Connection refused" in down.stderr, down
