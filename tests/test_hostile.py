"""Under attack: a hostile or broken peer must never stop the pipeline or lose data.

The probe side here: a real ``popwatch-probe run`` (measuring a real Knot) ships to a
"collector" that misbehaves. That collector is a stand-in: a real popwatch collector
never sends these answers, and no other server can be told to. Each case ends in exact
counts of what stayed in the probe's spool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import servers
from aiohttp import web
from procs import PROBE


class HostileCollector:
    """A stand-in collector answering every request with ``answer`` (no real collector
    sends such answers); it counts the posts it got, on a thread of its own."""

    def __init__(self, answer: Callable[[web.Request], object]) -> None:
        self.answer = answer
        self.posts = 0
        self.port = servers.free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self.posts += 1
            await request.read()
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=50_000_000)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> HostileCollector:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def knot() -> Iterator[servers.Knot]:
    with servers.Knot("knot-hostile", "id-hostile") as k:
        yield k.start()


class Probe:
    """A shipping ``popwatch-probe run`` with two 1-second targets on Knot."""

    def __init__(self, tmp_path: Path, collector_url: str, knot: servers.Knot) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            "targets:\n"
            + "".join(
                f"  - {{name: t{i}, topology: unicast, server: 127.0.0.1, port: {knot.port}, "
                "interval: 1, timeout: 0.5, queries: [{qname: example.test}]}\n"
                for i in range(2)
            )
        )
        conf = tmp_path / "probe.yaml"
        conf.write_text("id: probe-h\nbatch_s: 0.3\nheartbeat_s: 3600\nconfig_s: 3600\n")
        self.spool = tmp_path / "data" / "spool"
        env = {
            **os.environ,
            "POPWATCH_COLLECTOR_URL": collector_url,
            "POPWATCH_TOKEN": "pw1_x_y",
            "POPWATCH_DATA_DIR": str(tmp_path / "data"),
            "POPWATCH_TARGETS": str(targets),
        }
        self.proc = subprocess.Popen(
            [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
        )
        self.err = ""

    def stop(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the probe took to exit."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        _, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, time.monotonic() - t0

    def spooled(self) -> int:
        return len(list(self.spool.glob("*.json.gz")))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


def _json(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="application/json")


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>hello</body></html>",
        "[1,2]",
        '{"accepted":"lots","rejected":[],"duplicate":false}',
        '{"accepted":1,"rejected":[{"idx":0}],"duplicate":false}',
        "{}",
    ],
)
def test_an_unexpected_200_keeps_the_batch_and_the_probe_running(
    tmp_path: Path, knot: servers.Knot, body: str
) -> None:
    """A 200 whose body is not an ingest answer for the whole batch: the probe logs it,
    keeps measuring, keeps every batch, and retries (was: an ExceptionGroup traceback and
    exit 1, again on every restart)."""
    with HostileCollector(lambda r: _json(body)) as hostile:
        probe = Probe(tmp_path, hostile.url, knot)
        time.sleep(4)
        alive = probe.proc.poll() is None
        code, _ = probe.stop()
    assert alive, probe.err
    assert code == 0, probe.err
    assert "Traceback" not in probe.err
    assert "not an ingest answer" in probe.err or "the answer covers" in probe.err
    assert hostile.posts >= 2  # it retried
    assert probe.spooled() >= 4  # ~4 s of 0.3 s batches, none deleted


def test_a_redirect_is_never_followed_and_deletes_nothing(
    tmp_path: Path, knot: servers.Knot
) -> None:
    """A 301 from the "collector" to another host that answers 200 ``{}``: the probe does
    not follow it, and deletes no batch (was: it followed as a GET and deleted 3 batches
    that were never delivered)."""
    with HostileCollector(
        lambda r: _json('{"accepted":0,"rejected":[],"duplicate":false}')
    ) as other:
        moved = other.url + "/api/v1/measurements"
        with HostileCollector(
            lambda r: web.Response(status=301, headers={"Location": moved})
        ) as hostile:
            probe = Probe(tmp_path, hostile.url, knot)
            time.sleep(3.5)
            code, _ = probe.stop()
    assert code == 0, probe.err
    assert hostile.posts >= 1
    assert other.posts == 0
    assert "redirect to" in probe.err and "not followed" in probe.err
    assert probe.spooled() >= 3


def test_retry_after_is_capped(tmp_path: Path, knot: servers.Knot) -> None:
    """``Retry-After: 1000000000`` (or ``inf``) is capped at 300 s, and the cap is logged
    (was: shipping stalled until a restart)."""
    for value in ("1000000000", "inf"):

        def busy(request: web.Request, v: str = value) -> web.Response:
            return web.Response(status=429, text="slow down", headers={"Retry-After": v})

        with HostileCollector(busy) as hostile:
            probe = Probe(tmp_path / value, hostile.url, knot)
            time.sleep(2.5)
            code, took = probe.stop()
        assert code == 0, probe.err
        assert f"collector asked to wait {value} s; waiting 300 s at most" in probe.err
        assert took < 8, took


def test_sigterm_is_quick_when_the_collector_never_answers(
    tmp_path: Path, knot: servers.Knot
) -> None:
    """A collector that accepts connections and never answers: SIGTERM ends the probe in
    a few seconds, within Docker's 10 s, and the unsent batches stay spooled (was: 28 s)."""

    async def never(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    with HostileCollector(never) as hostile:
        probe = Probe(tmp_path, hostile.url, knot)
        time.sleep(2.5)
        code, took = probe.stop()
    assert code == 0, probe.err
    assert took < 8, took
    assert probe.spooled() >= 2


def test_a_huge_answer_is_not_read_whole(tmp_path: Path, knot: servers.Knot) -> None:
    """A 200 streaming a 300 MB body: the probe reads a bounded part, keeps its batches,
    and its memory stays small (was: 808 MB)."""

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await request.read()
        await resp.prepare(request)
        chunk = b" " * 1_000_000
        for _ in range(300):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    with HostileCollector(huge) as hostile:
        probe = Probe(tmp_path, hostile.url, knot)
        time.sleep(4)
        rss = probe.peak_rss_mb()
        code, _ = probe.stop()
    assert code == 0, probe.err
    assert rss < 150, rss
    assert "over 8388608 bytes" in probe.err
    assert probe.spooled() >= 3
