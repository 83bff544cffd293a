"""Phase accuracy of the HTTP check, next to blackbox_exporter's http prober.

Against tests/support/web.py's server (in its own netns behind the lab's user-space wire),
each tool fetches the page with no delay (the baseline) and with a configured delay in one
phase at a time: TCP connect (SYN-ACK held), TLS handshake, time to first byte, body.
For each tool and phase the deviation is

    median(phase with the delay) - median(phase at baseline) - configured delay

so each tool's own constant overhead cancels, and what is left is how much of the delay
it put in the wrong place (or missed). Phases map as blackbox names them: connect,
tls, processing (TTFB) and transfer (body). The URL is an IP literal, since blackbox
cannot be pointed at a nameserver on another port (DNS is compared in bench/accuracy).
Needs root (netns, TUN).

    python bench/ttfb.py [--delay 0.05] [--fetches 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
from pathlib import Path

import msgspec
from _common import BlackboxExporter, median
from support import web

from probe.checks.http import HttpJob, measure
from probe.config import HttpTarget

PHASES = ("connect", "tls", "ttfb", "transfer")
BB_PHASE = {"connect": "connect", "tls": "tls", "ttfb": "processing", "transfer": "transfer"}


def scenarios(lab: web.WebLab, delay: float) -> dict[str, str]:
    return {
        "baseline": lab.url(web.PLAIN_PORT),
        "connect": lab.url(web.CONNECT_PORT),
        "tls": lab.url(web.TLS_PORT),
        "ttfb": lab.url(web.PLAIN_PORT, ttfb=delay),
        "transfer": lab.url(web.PLAIN_PORT, body=delay),
    }


async def popwatch_once(url: str, ca: Path) -> dict[str, float]:
    t = msgspec.convert(
        {
            "kind": "http",
            "name": "b",
            "topology": "anycast",
            "url": url,
            "tls_ca": str(ca),
            "timeout": 2,
        },
        HttpTarget,
    )
    r = await measure(HttpJob(t))
    assert r.error is None, r.error
    parts = (r.connect_ms or 0) + (r.tls_ms or 0) + (r.ttfb_ms or 0)
    return {
        "connect": r.connect_ms or 0.0,
        "tls": r.tls_ms or 0.0,
        "ttfb": r.ttfb_ms or 0.0,
        "transfer": (r.total_ms or 0) - parts,
    }


class Blackbox(BlackboxExporter):
    """blackbox_exporter with an http module trusting the lab's CA."""

    def __init__(self, workdir: Path, ca: Path) -> None:
        super().__init__(
            workdir,
            "  web:\n    prober: http\n    timeout: 5s\n    http:\n"
            "      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n"
            f"      tls_config:\n        ca_file: {ca}\n",
        )

    def once(self, url: str) -> dict[str, float]:
        body = self.probe("web", url)
        assert "probe_success 1" in body, body[-400:]
        got = dict(re.findall(r'probe_http_duration_seconds\{phase="(\w+)"\} (\S+)', body))
        return {p: float(got[BB_PHASE[p]]) * 1000 for p in PHASES}


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {p: statistics.median(row[p] for row in rows) for p in PHASES}


def deviations(
    results: dict[str, dict[str, float]], delay_ms: float
) -> dict[str, dict[str, float]]:
    """For each delayed phase: its error, and the largest leak into the other phases."""
    base = results["baseline"]
    out = {}
    for phase in PHASES:
        got = results[phase]
        own = got[phase] - base[phase] - delay_ms
        leak = max((abs(got[p] - base[p]) for p in PHASES if p != phase), default=0.0)
        out[phase] = {"own": own, "leak": leak}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--fetches", type=int, default=25)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    delay_ms = args.delay * 1000
    runs: list[tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as d, web.WebLab(args.delay, args.delay) as lab:
        lab.start()
        bb = Blackbox(Path(d), lab.cert)
        try:
            urls = scenarios(lab, args.delay)
            for i in range(args.runs):
                # interleaved: every scenario, both tools, fetch by fetch, so that a
                # slow spell of the machine hits baseline and delayed fetches alike
                rows: dict[str, dict[str, list[dict[str, float]]]] = {
                    "pw": {n: [] for n in urls},
                    "bb": {n: [] for n in urls},
                }
                for _ in range(args.fetches):
                    for name, url in urls.items():
                        rows["pw"][name].append(asyncio.run(popwatch_once(url, lab.cert)))
                        rows["bb"][name].append(bb.once(url))
                pw = {n: _medians(r) for n, r in rows["pw"].items()}
                bx = {n: _medians(r) for n, r in rows["bb"].items()}
                dp, db = deviations(pw, delay_ms), deviations(bx, delay_ms)
                runs.append((dp, db))
                print(
                    f"run {i + 1}/{args.runs}: deviation from the {delay_ms:.0f} ms delay, ms "
                    "(own phase / largest leak into another phase)"
                )
                for p in PHASES:
                    print(
                        f"  {p:9s} popwatch {dp[p]['own']:+7.3f} / {dp[p]['leak']:.3f}   "
                        f"blackbox {db[p]['own']:+7.3f} / {db[p]['leak']:.3f}",
                        flush=True,
                    )
        finally:
            bb.close()
    print()
    print(
        f"median of {args.runs} runs, |deviation| in ms (goal: every phase within 1 ms, "
        "closer than blackbox):"
    )
    print(f"  {'phase':9s} {'popwatch':>9s} {'blackbox':>9s}   leak: popwatch blackbox")
    for p in PHASES:
        own_p = median([abs(r[0][p]["own"]) for r in runs])
        own_b = median([abs(r[1][p]["own"]) for r in runs])
        leak_p = median([r[0][p]["leak"] for r in runs])
        leak_b = median([r[1][p]["leak"] for r in runs])
        print(f"  {p:9s} {own_p:9.3f} {own_b:9.3f}   {leak_p:14.3f} {leak_b:8.3f}")


if __name__ == "__main__":
    main()
