"""``popwatch-collector ask`` (a client of the asks API) and ``popwatch-collector
operators`` (who may ask)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from collector.ingest.registry import Registry, RegistryError
from collector.kinds import BY_NAME

DEFAULT_URL = "http://127.0.0.1:8080"

ASK_EXAMPLES = """\
examples:
  # what does 198.51.100.53 answer for example.com from three probes in ap-south, now?
  popwatch-collector ask --from region=ap-south --limit 3 dns 198.51.100.53 \\
    --qname example.com --nsid

  # one probe per region of two, and one named probe; every answer as a JSON line
  popwatch-collector ask --from region=eu-central --from region=us-east \\
    --from probe=probe-fra-1 --limit 3 --json dns ns1.example.net --qname example.com

  # ten queries a second for two minutes from ap-south: each site change, the outage to
  # the tenth of a second, the queries lost, the flips (also written as events)
  popwatch-collector ask --drill --from region=ap-south --duration 120 --interval 0.1 \\
    dns 198.51.100.53 --nsid

  # a page, and a ping, from Germany
  popwatch-collector ask --from country=DE http https://www.example.com/
  popwatch-collector ask --from country=DE --count 5 ping 198.51.100.53

--from takes KEY=VALUE[,KEY=VALUE...] with the keys region, country, city, asn, probe
and topology (probes measuring targets of that topology), and limit (probes from this
location at most; default --limit). Repeat it for several locations; without it the
whole fleet may be asked. Probes the alert engine marks sick or silent are skipped
(--include-unhealthy asks them too), and the answer says which.

The collector is --collector (default POPWATCH_COLLECTOR_URL, else
http://127.0.0.1:8080), the operator token --token or POPWATCH_OPERATOR_TOKEN
(`popwatch-collector operators add NAME` prints one). Exit status: 0 when a result came
with an answer, 1 when none did, 2 when the ask was refused or the arguments are wrong.
"""

OPERATORS_EXAMPLES = """\
examples:
  popwatch-collector operators add alice --data-dir ./data     # prints the token once
  popwatch-collector operators list --data-dir ./data
  popwatch-collector operators revoke alice --data-dir ./data  # 401 from the next request

Operators may ask the fleet (POST /api/v1/asks, `popwatch-collector ask`); probes may
not, and an operator token is refused on the probe API. Tokens are hashed as probe
tokens are, in the same registry (DATA_DIR/registry.sqlite).
"""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``ask`` and ``operators`` on the collector's command line."""
    raw = argparse.RawDescriptionHelpFormatter
    ops = sub.add_parser(
        "operators",
        help="register, list and revoke the operators who may ask the fleet",
        description=textwrap.fill(
            "Operators may ask the fleet for measurements (POST /api/v1/asks); each has "
            "a token of its own, hashed in the registry like probe tokens.",
            88,
        ),
        epilog=OPERATORS_EXAMPLES,
        formatter_class=raw,
    )
    osub = ops.add_subparsers(dest="operators_cmd", required=True, metavar="ACTION")
    add = osub.add_parser("add", parents=[common], help="register an operator, print its token")
    add.add_argument("name", help="the operator's name (1-63 of A-Z a-z 0-9 _ . : -)")
    osub.add_parser("list", parents=[common], help="list operators")
    rev = osub.add_parser("revoke", parents=[common], help="refuse an operator's token")
    rev.add_argument("name", help="the name of the operator whose token stops working")

    ask = sub.add_parser(
        "ask",
        help="ask chosen probes to measure now; a failover drill with --drill",
        description=textwrap.fill(
            "Ask probes chosen by place to measure a target now, and print each result as "
            "it arrives (probe, region, and the kind's columns), then a summary per region. "
            "With --drill, a burst that times a failover: each site change, the outage, "
            "the queries lost and the flips, per probe.",
            88,
        ),
        epilog=ASK_EXAMPLES,
        formatter_class=raw,
    )
    ask.add_argument("--collector", metavar="URL", help="the collector's base URL")
    ask.add_argument("--token", help="an operator token (default POPWATCH_OPERATOR_TOKEN)")
    ask.add_argument("--ca", metavar="FILE", help="a CA certificate to pin the collector's to")
    ask.add_argument(
        "--from",
        dest="locations",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="a location to ask from (repeatable): region, country, city, asn, probe, "
        "topology, limit",
    )
    ask.add_argument("--limit", type=int, default=1, help="probes to ask at most (default 1)")
    ask.add_argument(
        "--include-unhealthy",
        action="store_true",
        help="ask probes the alert engine marks sick or silent too",
    )
    ask.add_argument("--count", type=int, default=1, help="rounds per probe (default 1)")
    ask.add_argument(
        "--interval", type=float, help="seconds between rounds (default 1; 0.1 with --drill)"
    )
    ask.add_argument(
        "--drill", action="store_true", help="a failover drill: site changes, outage, lost, flips"
    )
    ask.add_argument("--duration", type=float, help="with --drill: seconds (default 60)")
    ask.add_argument("--json", action="store_true", help="print one result per line, as JSON")
    kinds = ask.add_subparsers(dest="type", required=True, metavar="TYPE")
    for kind in BY_NAME.values():
        if kind.ask is None:
            continue
        k = kinds.add_parser(
            kind.name,
            help=f"ask a {kind.name} measurement",
            description=f"example: popwatch-collector ask --from region=R {kind.ask.example}",
        )
        k.add_argument("target", help="what to measure: an address or host name (http: a URL)")
        kind.ask.add_arguments(k)


def operators(args: argparse.Namespace, data_dir: Path) -> int:
    path = data_dir / "registry.sqlite"
    cmd = args.operators_cmd
    try:
        registry = Registry(path, create=cmd == "add")
    except RegistryError as exc:
        print(f"popwatch-collector operators {cmd}: {exc}", file=sys.stderr)
        return 2
    try:
        if cmd == "add":
            print(registry.add_operator(args.name))
            print(
                f"operator {args.name} registered; the token above is shown once: give it to "
                "`popwatch-collector ask` as POPWATCH_OPERATOR_TOKEN",
                file=sys.stderr,
            )
        elif cmd == "revoke":
            registry.revoke_operator(args.name)
            print(
                f"operator {args.name} revoked; its token is refused from now on", file=sys.stderr
            )
        else:
            rows = registry.operators()
            print(f"{'name':24} {'state':8} created")
            for name, created, revoked in rows:
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(created))
                print(f"{name:24} {'revoked' if revoked else 'active':8} {when}Z")
            if not rows:
                print(f"no operators in {path}", file=sys.stderr)
    except RegistryError as exc:
        print(f"popwatch-collector operators {cmd}: {exc}", file=sys.stderr)
        return 2
    finally:
        registry.close()
    return 0


# --------------------------------------------------------------------------- ask


def _location(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ValueError(f"--from {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
        if key not in ("region", "country", "city", "asn", "probe", "topology", "limit"):
            raise ValueError(
                f"--from {text!r}: {key!r} is not one of region, country, city, asn, probe, "
                "topology, limit"
            )
        if key in ("asn", "limit"):
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"--from {text!r}: {key} must be a whole number") from None
        else:
            out[key] = value.strip()
    return out


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /api/v1/asks`` the arguments describe (ValueError: why not)."""
    kind = BY_NAME[args.type]
    assert kind.ask is not None
    interval = args.interval if args.interval is not None else (0.1 if args.drill else 1.0)
    count = args.count
    if args.drill:
        duration = args.duration if args.duration is not None else 60.0
        count = max(1, round(duration / interval))
    elif args.duration is not None:
        raise ValueError("--duration goes with --drill (else: --count and --interval)")
    return {
        "type": kind.name,
        "target": args.target,
        "options": kind.ask.options(args),
        "locations": [_location(t) for t in args.locations],
        "limit": args.limit,
        "healthy_only": not args.include_unhealthy,
        "count": count,
        "interval_s": interval,
        "drill": args.drill,
    }


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def summary(status: dict[str, Any], value: str) -> list[str]:
    """One line per region: results, answered, the median of ``value``."""
    by: dict[str, list[Any]] = {}
    for r in status.get("results", []):
        by.setdefault(str(r.get("region", "?")), []).append(r.get(value))
    lines = []
    for region, values in sorted(by.items()):
        got = [float(v) for v in values if v is not None]
        med = f", {value} median {statistics.median(got):.3f}" if got else ""
        lines.append(f"{region}: {len(values)} results, {len(got)} answered{med}")
    return lines


def figures(status: dict[str, Any]) -> list[str]:
    """A drill's report, a few lines per probe and series."""
    out = []
    for f in status.get("figures", []):
        out.append(
            f"{f['probe']} ({f['region']}) {f['series']}: {f['flips']} flips, outage "
            f"{f['outage_s']:.1f} s, {f['lost']} of {f['queries']} queries lost; sites "
            + " -> ".join(s or "?" for s in f["sites"])
        )
        for c in f["changes"]:
            at = time.strftime("%H:%M:%S", time.gmtime(c["at"] / 1e9))
            out.append(
                f"  {at}.{int(c['at'] / 1e8) % 10}Z {c['from_site']} -> {c['to_site']}: "
                f"outage {c['outage_s']:.1f} s ({c['outage_ms']:.0f} ms), {c['lost']} lost"
            )
    return out


async def _ask(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    body = request_of(args)
    base = (args.collector or os.environ.get("POPWATCH_COLLECTOR_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("POPWATCH_OPERATOR_TOKEN")
    if not token:
        raise ValueError("no operator token: --token or POPWATCH_OPERATOR_TOKEN")
    ctx = ssl.create_default_context(cafile=args.ca) if args.ca else None
    headers = {"Authorization": f"Bearer {token}"}
    kind = BY_NAME[args.type]
    assert kind.ask is not None
    columns = [("probe", 20, "probe"), ("region", 12, "region"), *kind.ask.columns]
    widths = [w for _, w, _ in columns]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(ssl=ctx) if ctx else None
    ) as session:
        async with session.post(f"{base}/api/v1/asks", json=body) as resp:
            made = await resp.json(content_type=None)
            if resp.status != 202:
                why = str(made.get("error") if isinstance(made, dict) else made)
                for s in made.get("skipped", []) if isinstance(made, dict) else []:
                    why += f"; {s['probe']} skipped: {s['reason']}"
                print(f"popwatch-collector ask: HTTP {resp.status}: {why}", file=sys.stderr)
                return 2
        chosen = ", ".join(f"{p['probe']} ({p.get('region', '?')})" for p in made["probes"])
        print(f"ask {made['id']}: {len(made['probes'])} probes: {chosen}", file=sys.stderr)
        for s in made["skipped"]:
            print(f"  skipped {s['probe']}: {s['reason']}", file=sys.stderr)
        if not args.json:
            out(_row([t for t, _, _ in columns], widths))
        final: dict[str, Any] = {}
        async with session.get(f"{base}{made['location']}/stream") as resp:
            event = ""
            async for raw in resp.content:
                text = raw.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    data = json.loads(text[6:])
                    if event == "result":
                        if args.json:
                            out(json.dumps(data))
                        else:
                            out(_row([_fmt(data.get(c)) for _, _, c in columns], widths))
                    elif event == "finished":
                        final = data
                        break
        if not final:
            print("popwatch-collector ask: the stream ended before the ask did", file=sys.stderr)
            return 1
        if args.json:
            for f in final.get("figures", []):
                out(json.dumps({"drill": f}))
        else:
            for line in summary(final, kind.ask.value):
                out(line)
            for line in figures(final):
                out(line)
            for p in final["probes"]:
                if p.get("state") not in ("done", None):
                    out(
                        f"{p['probe']}: {p['state']}"
                        + (f": {p['message']}" if p.get("message") else "")
                    )
        answered = any(r.get(kind.ask.value) is not None for r in final.get("results", []))
        return 0 if answered else 1


def ask(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    try:
        return asyncio.run(_ask(args, out))
    except ValueError as exc:
        print(f"popwatch-collector ask: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        print(f"popwatch-collector ask: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["add_parsers", "ask", "operators", "request_of"]
