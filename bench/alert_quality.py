"""How far an operator can believe the alerts: false alarms, flapping, detection and
resolution delays, for today's rules and for the rules before them, in the same run.

The engine's rules and its waits (``collector.alerts.rules.assess`` and
``collector.alerts.state.States``, the code ``Engine.step`` runs) are driven at explicit
evaluation instants, every ``evaluate_every_s`` (30 s), over simulated probes with seeded
noise, so hours of simulated time take seconds. Only InfluxDB is left out: the samples
of each window are handed to the rules as ``Engine.step`` hands them what it read.

The world: regions of 3 probes, one DNS target per scenario, every probe measuring it
each ``--interval`` seconds (10 s by default; the rules see 30 samples of each probe in
a 300 s window). Latency is log-normal around each probe's own median, with p99 = 3 x
p50 (sigma = ln 3 / 2.326); each series' baseline is its own simulated day before.
Every rule is on with its defaults (quorum 2, for_s 30 s, keep_firing_for_s 60 s;
before: for 2 and keep_firing_for 2 evaluations).

The figures:
- false alarms per 10,000 series-hours (a series: one probe's target), with loss steady
  at 0.5 x max_error_ratio (2.5 %) and latency that never changes;
- state changes per region-hour with loss steady at 1.0 x and 1.2 x the threshold, and
  how many regions saw a resolution while the loss lasted;
- detection delay for a step to 3 x the loss threshold (15 %, from 0.5 %) and to 4 x
  latency, p50 / p95 over regions whose step falls anywhere between evaluations;
- time to resolve after the step ends, p95.

"Before" is the rules of ``--before`` (the commit before these rules: by default
bd37051^), imported from a git worktree of it in a second process.

    .venv/bin/python bench/alert_quality.py            # about 10 minutes on two cores
    .venv/bin/python bench/alert_quality.py --quick    # a tenth of the series-hours
    .venv/bin/python bench/alert_quality.py --e2e 10   # through real processes, 10 min

The end-to-end case runs an ingest collector, one evaluator with the default rules and
waits, a real Alertmanager and a JSON webhook (tests/test_alerts_live.py's stack: two
probes a region at 10 samples a second each), a steady 6 % loss for the minutes given,
then none, and prints what reached the webhook and Alertmanager's receiver.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NS = 1_000_000_000
EVERY_S = 30
WINDOW_S = 300
SIGMA = math.log(3) / 2.326  # log-normal with p99 = 3 x p50
THRESHOLD = 0.05  # max_error_ratio's default
PROBES_PER_REGION = 3
BEFORE = "bd37051^"

Loss = Callable[[int, float], float]  # (region, t seconds) -> loss ratio
Factor = Callable[[int, float], float]  # (region, t seconds) -> latency factor


# ----------------------------------------------------------------- the simulated world


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


class World:
    """``regions`` x 3 probes on one target; ``loss`` and ``factor`` say how each region
    behaves at each instant."""

    def __init__(
        self, regions: int, interval: float, seed: int, loss: Loss, factor: Factor
    ) -> None:
        from collector.alerts.window import Sample, Series, Snapshot

        self.Sample, self.Snapshot = Sample, Snapshot
        self.rng = random.Random(seed)
        self.interval, self.loss, self.factor = interval, loss, factor
        self.probes = [
            (f"r{r}-{i}", f"r{r}", r) for r in range(regions) for i in range(PROBES_PER_REGION)
        ]
        self.median = {p: 10 + 40 * self.rng.random() for p, _, _ in self.probes}
        self.phase = {p: self.rng.random() * interval for p, _, _ in self.probes}
        self.series = {
            p: Series("dns", p, region, "t", "unicast", "beta", []) for p, region, _ in self.probes
        }
        self.window: dict[str, deque[Any]] = {p: deque() for p, _, _ in self.probes}
        self.next_n = {p: 0 for p, _, _ in self.probes}
        self.baselines = {p: self._baseline(p) for p, _, _ in self.probes}

    def _value(self, probe: str, factor: float) -> float:
        return self.median[probe] * factor * math.exp(self.rng.gauss(0, SIGMA))

    def _baseline(self, probe: str) -> tuple[float, float, float]:
        """(p50, p90 of the bucket medians, median of the bucket p95s) of a simulated day."""
        per_bucket = max(1, int(300 / self.interval))
        medians, p95s = [], []
        for _ in range(288):
            xs = [self._value(probe, 1.0) for _ in range(per_bucket)]
            medians.append(statistics.median(xs))
            p95s.append(percentile(xs, 95))
        return (
            statistics.median(medians),
            percentile(medians, 90),
            statistics.median(p95s),
        )

    def snapshot(self, t: float) -> Any:
        """The window's samples up to ``t`` (seconds), as ``fetch`` gives them."""
        for p, _, r in self.probes:
            w = self.window[p]
            while True:
                ts = self.phase[p] + self.next_n[p] * self.interval
                if ts > t:
                    break
                self.next_n[p] += 1
                if self.rng.random() < self.loss(r, ts):
                    w.append(self.Sample(int(ts * NS), False, None, "TIMEOUT", "", None))
                else:
                    v = self._value(p, self.factor(r, ts))
                    w.append(self.Sample(int(ts * NS), True, v, "NOERROR", "", None))
            while w and w[0].ts <= (t - WINDOW_S) * NS:
                w.popleft()
            self.series[p].samples = list(w)
        at = int(t * NS)
        series = {("dns", p, "t"): s for p, s in self.series.items()}
        beats = {p: (region, at) for p, region, _ in self.probes}
        return self.Snapshot(at, at - WINDOW_S * NS, series, beats)


class Rules:
    """The rules and waits of whichever ``collector`` is importable (today's, or the
    commit's of ``--before``)."""

    def __init__(self) -> None:
        from collector.alerts import state
        from collector.alerts.config import load_alerts, settings_for
        from collector.alerts.rules import assess, base

        self.new = hasattr(base, "bounds")
        keys = {"for_s": 30, "keep_firing_for_s": 60} if self.new else {"for": 2}
        self.cfg = load_alerts({"evaluate_every_s": EVERY_S, "quorum": 2, **keys})
        self.states = (
            state.States(default_for_s=30, default_keep_s=60) if self.new else state.States()
        )
        self.assess, self.base, self.settings_for = assess, base, settings_for

    def step(self, world: World, t: float) -> list[tuple[float, str, dict[str, str]]]:
        """One evaluation at ``t``: the state changes (time, state, labels)."""
        snap = world.snapshot(t)
        if self.new:
            from collector.alerts.rollup import Baseline

            def baseline(kind: str, probe: str, target: str, site: str) -> Any:
                p50, p90, tail = world.baselines[probe]
                return Baseline(p50, p90, tail, 288)

            firing = self.base.Firing(
                (a.labels, a.condition.probes if a.condition else ()) for a in self.states.firing()
            )
        else:

            def baseline(kind: str, probe: str, target: str, site: str) -> Any:
                return (world.baselines[probe][0], 288)

            firing = self.base.Firing(a.labels for a in self.states.firing())
        inp = self.base.Inputs(
            cfg=self.cfg,
            snap=snap,
            settings=lambda target, topology, provider: self.settings_for(
                self.cfg, target, topology, provider
            ),
            baseline=baseline,
            usual_site=lambda kind, probe, target: None,
            firing=firing,
            registered={p: region for p, region, _ in world.probes},
            served={"t"},
        )
        changes = self.states.apply(self.assess(inp), snap.at)
        return [(t, c.state, dict(c.alert.labels)) for c in changes]


def run(world: World, start: float, end: float) -> list[tuple[float, str, dict[str, str]]]:
    rules = Rules()
    out = []
    t = start
    while t <= end:
        out += rules.step(world, t)
        t += EVERY_S
    return out


# ----------------------------------------------------------------------- the scenarios


def false_alarms(series_hours: float, interval: float, seed: int) -> dict[str, Any]:
    """Loss steady at 0.5 x the threshold, latency unchanged: every firing is false."""
    regions = 100
    hours = series_hours / (regions * PROBES_PER_REGION)
    world = World(regions, interval, seed, lambda r, t: 0.5 * THRESHOLD, lambda r, t: 1.0)
    changes = run(world, WINDOW_S, WINDOW_S + hours * 3600)
    fired = [lab["alertname"] for _, state, lab in changes if state == "firing"]
    scale = 10_000 / (regions * PROBES_PER_REGION * hours)
    return {
        "series_hours": regions * PROBES_PER_REGION * hours,
        "errors": fired.count("errors") * scale,
        "latency": fired.count("latency") * scale,
        "other": sum(1 for f in fired if f not in ("errors", "latency")) * scale,
    }


def steady(ratio: float, hours: float, interval: float, seed: int) -> dict[str, Any]:
    """Loss steady at ``ratio`` x the threshold in 20 regions for ``hours``."""
    regions = 20
    world = World(regions, interval, seed, lambda r, t: ratio * THRESHOLD, lambda r, t: 1.0)
    changes = run(world, WINDOW_S, WINDOW_S + hours * 3600)
    errs = [(state, lab["region"]) for _, state, lab in changes if lab["alertname"] == "errors"]
    firing = sum(1 for s, _ in errs if s == "firing")
    resolved_regions = {r for s, r in errs if s == "resolved"}
    return {
        "per_region_hour": len(errs) / (regions * hours),
        "firings": firing,
        "regions": regions,
        "hours": hours,
        "resolved_while_lasting": len(resolved_regions),
    }


def steps(regions: int, interval: float, seed: int) -> dict[str, Any]:
    """Each region's step (loss to 3 x the threshold, or latency to 4 x) at its own
    instant between evaluations, for 15 minutes, then back."""
    rng = random.Random(seed)
    at = {r: 1200 + rng.random() * EVERY_S for r in range(regions)}
    lasts = 900
    out: dict[str, Any] = {}
    for name, loss, factor in (
        (
            "errors",
            lambda r, t: 3 * THRESHOLD if at[r] <= t < at[r] + lasts else 0.005,
            lambda r, t: 1.0,
        ),
        (
            "latency",
            lambda r, t: 0.005,
            lambda r, t: 4.0 if at[r] <= t < at[r] + lasts else 1.0,
        ),
    ):
        world = World(regions, interval, seed + 1, loss, factor)
        changes = run(world, WINDOW_S, 1200 + EVERY_S + lasts + 900)
        detect, resolve, missed = [], [], 0
        for r in range(regions):
            mine = [
                (t, s)
                for t, s, lab in changes
                if lab["alertname"] == name and lab.get("region") == f"r{r}"
            ]
            fired = [t for t, s in mine if s == "firing" and t >= at[r]]
            ended = [t for t, s in mine if s == "resolved" and t >= at[r] + lasts]
            if not fired:
                missed += 1
                continue
            detect.append(fired[0] - at[r])
            if ended:
                resolve.append(ended[0] - (at[r] + lasts))
        out[name] = {
            "detect_p50": percentile(detect, 50),
            "detect_p95": percentile(detect, 95),
            "resolve_p95": percentile(resolve, 95),
            "missed": missed,
            "unresolved": len(detect) - len(resolve),
        }
    return out


def outage(probes: int, interval: float = 60, trials: int = 2000) -> tuple[float, float]:
    """With the defaults (window 300 s, evaluations every 30 s) and probes every
    ``interval`` s at random phases: the median and the worst of the time from a region's
    first lost query (every probe stops answering) to the first evaluation whose samples
    prove it, by the errors rule's own test; the alert fires ``for_s`` later."""
    from collector.alerts.rules.errors import SPANS, ErrorsSettings, fires

    rule, rng, out = ErrorsSettings(), random.Random(7), []
    for _ in range(trials):
        phases = [rng.random() * interval for _ in range(probes)]
        t0 = 3600 + rng.random() * EVERY_S
        k = int(t0 // EVERY_S) + 1
        while True:
            at = k * EVERY_S
            counts = []
            for share in SPANS:
                cut = at - share * rule.window_s
                times = [p + i * interval for p in phases for i in range(int(at // interval) + 1)]
                mine = [t for t in times if cut < t <= at]
                counts.append((sum(1 for t in mine if t >= t0), len(mine)))
            if fires(counts, rule) is not None:
                out.append(at - t0)
                break
            k += 1
    return statistics.median(out), max(out)


def figures(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    out = {
        "false_alarms": false_alarms(args.series_hours, args.interval, args.seed),
        "steady_1.0": steady(1.0, args.hours, args.interval, args.seed + 10),
        "steady_1.2": steady(1.2, args.hours, args.interval, args.seed + 20),
        "steps": steps(args.regions, args.interval, args.seed + 30),
    }
    out["seconds"] = time.monotonic() - t0
    return out


# -------------------------------------------------------------------------- the report


def before(args: argparse.Namespace) -> dict[str, Any] | None:
    """The same figures with the rules of ``args.before``, from a worktree of it."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        made = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            print(f"before: no worktree of {args.before}: {made.stderr.strip()}", file=sys.stderr)
            return None
        try:
            argv = [sys.executable, __file__, "--json", "--tree", str(tree)]
            argv += [f"--series-hours={args.series_hours}", f"--hours={args.hours}"]
            argv += [f"--regions={args.regions}", f"--interval={args.interval}"]
            argv += [f"--seed={args.seed}"]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"before: {done.stderr.strip()[-2000:]}", file=sys.stderr)
                return None
            result: dict[str, Any] = json.loads(done.stdout)
            return result
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )


def table(now: dict[str, Any], old: dict[str, Any] | None, interval: float) -> str:
    detect_goal = interval + 30 + 2 * EVERY_S
    resolve_goal = 60 + 2 * EVERY_S

    def f(d: dict[str, Any] | None, *path: str, fmt: str = "{:.1f}") -> str:
        if d is None:
            return "-"
        x: Any = d
        for p in path:
            x = x[p]
        return "-" if isinstance(x, float) and math.isnan(x) else fmt.format(x)

    def steady_cell(d: dict[str, Any] | None, key: str) -> str:
        if d is None:
            return "-"
        s = d[key]
        return (
            f"{s['per_region_hour']:.2f} ({s['firings']} firings, "
            f"{s['resolved_while_lasting']} of {s['regions']} regions resolved)"
        )

    rows = [
        ("figure", "before", "now", "goal"),
        (
            "false alarms / 10,000 series-hours, loss 0.5 x",
            f(old, "false_alarms", "errors"),
            f(now, "false_alarms", "errors"),
            "0",
        ),
        (
            "false alarms / 10,000 series-hours, log-normal latency",
            f(old, "false_alarms", "latency"),
            f(now, "false_alarms", "latency"),
            "0",
        ),
        (
            "errors state changes / region-hour, loss 1.0 x",
            steady_cell(old, "steady_1.0"),
            steady_cell(now, "steady_1.0"),
            "<= 1, no resolution",
        ),
        (
            "errors state changes / region-hour, loss 1.2 x",
            steady_cell(old, "steady_1.2"),
            steady_cell(now, "steady_1.2"),
            "<= 1, no resolution",
        ),
    ]
    for name, what in (("errors", "loss 3 x"), ("latency", "latency 4 x")):
        rows.append(
            (
                f"detection, {what}, p50 / p95 s (missed)",
                f"{f(old, 'steps', name, 'detect_p50', fmt='{:.0f}')} / "
                f"{f(old, 'steps', name, 'detect_p95', fmt='{:.0f}')} "
                f"({f(old, 'steps', name, 'missed', fmt='{}')})",
                f"{f(now, 'steps', name, 'detect_p50', fmt='{:.0f}')} / "
                f"{f(now, 'steps', name, 'detect_p95', fmt='{:.0f}')} "
                f"({f(now, 'steps', name, 'missed', fmt='{}')})",
                f"p95 <= {detect_goal:g}",
            )
        )
        rows.append(
            (
                f"time to resolve, {what}, p95 s (unresolved)",
                f"{f(old, 'steps', name, 'resolve_p95', fmt='{:.0f}')} "
                f"({f(old, 'steps', name, 'unresolved', fmt='{}')})",
                f"{f(now, 'steps', name, 'resolve_p95', fmt='{:.0f}')} "
                f"({f(now, 'steps', name, 'unresolved', fmt='{}')})",
                f"<= {resolve_goal:g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def end_to_end(minutes: float) -> None:
    """A steady loss at 1.2 x the threshold for ``minutes`` through real processes (an
    ingest collector, an evaluator with the default rules and waits, Alertmanager, a
    JSON webhook), then none: what the webhook and Alertmanager's receiver got."""
    import asyncio
    import contextlib

    sys.path.insert(0, str(ROOT / "tests"))
    from support.alertmanager import Alertmanager, Receiver
    from support.influx import InfluxDB
    from test_alerts_live import LOST, PROBES, RATE, Stack, statuses, until

    async def go(influx: InfluxDB, tmp: Path) -> None:
        with Receiver() as behind, Receiver() as hook, Alertmanager(behind.url) as am:
            alerts = {
                "alertmanager_url": am.url,
                "webhooks": [{"url": hook.url, "format": "json"}],
                "rules": {"latency": {"enabled": False}},
            }
            stack = Stack(influx, tmp, alerts, 1)
            lossy = True
            stack.feed.fails = lambda probe, n: lossy and n % 100 in LOST
            await stack.start()
            started = time.monotonic()
            try:
                while time.monotonic() - started < minutes * 60:
                    await asyncio.sleep(30)
                    print(
                        f"  {time.monotonic() - started:4.0f} s of loss: webhook "
                        f"{statuses(hook, 'eu')}, behind Alertmanager {statuses(behind, 'eu')}",
                        flush=True,
                    )
                during = (statuses(hook, "eu"), statuses(behind, "eu"))
                lossy = False
                stopped = time.monotonic()
                with contextlib.suppress(AssertionError):  # not within 15 minutes: says so
                    await until(lambda: "resolved" in statuses(hook, "eu"), 900, "resolved")
                took = time.monotonic() - stopped
                await asyncio.sleep(60)
            finally:
                await stack.stop()
            print(
                f"END TO END: {len(PROBES) // 2} probes a region at {RATE} samples/s each, loss "
                f"6 % (1.2 x) for {minutes:g} min: webhook {during[0]}, behind Alertmanager "
                f"{during[1]}; after the loss stopped: webhook {statuses(hook, 'eu')[len(during[0]) :]}"
                f" (resolved {took:.0f} s after), behind Alertmanager "
                f"{statuses(behind, 'eu')[len(during[1]) :]}; goal: one firing, no resolution, "
                "then one resolution",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp, InfluxDB() as influx:
        asyncio.run(go(influx.start(), Path(tmp)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--interval", type=float, default=10.0, help="probe interval, s (10)")
    ap.add_argument("--series-hours", type=float, default=10_000, help="for false alarms")
    ap.add_argument("--hours", type=float, default=5, help="of steady loss per ratio (5)")
    ap.add_argument("--regions", type=int, default=40, help="regions stepping (40)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--before", default=BEFORE, help=f"the rules compared with ({BEFORE})")
    ap.add_argument("--quick", action="store_true", help="a tenth of the simulated time")
    ap.add_argument(
        "--e2e",
        type=float,
        metavar="MINUTES",
        help="instead: MINUTES of steady 1.2 x loss through real processes (10)",
    )
    ap.add_argument("--no-before", action="store_true", help="today's rules only")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e:
        end_to_end(args.e2e)
        return
    if args.quick:
        args.series_hours, args.hours, args.regions = args.series_hours / 10, 1, 20
    if args.tree:  # the second process: the rules of another tree
        sys.path.insert(0, args.tree)
    if args.json:
        print(json.dumps(figures(args)))
        return
    print(
        f"alert quality: regions of {PROBES_PER_REGION} probes, probe interval "
        f"{args.interval:g} s, evaluations every {EVERY_S} s, window {WINDOW_S} s; "
        f"{args.series_hours:g} series-hours of false-alarm time, {args.hours:g} h per "
        f"steady loss, {args.regions} stepping regions",
        flush=True,
    )
    now = figures(args)
    print(f"today's rules: {now['seconds']:.0f} s of computing", flush=True)
    old = None if args.no_before else before(args)
    if old is not None:
        print(f"the rules of {args.before}: {old['seconds']:.0f} s", flush=True)
    print(table(now, old, args.interval))
    for probes in (2, 3, 5):
        mid, worst = outage(probes)
        print(
            f"outage, {probes} probes a region at 60 s: proven {mid:.0f} s (median), {worst:.0f} s "
            f"(worst) after the first lost query; fires for_s 30 s later: worst {worst + 30:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
