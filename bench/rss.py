"""Peak RSS of `popwatch-probe run` with 1,000 targets at a 10 s interval.

Runs the installed command against a local Knot for --seconds (default 40: four full
rounds of every series) and reads the kernel's high-water mark (VmHWM) just before the
process is stopped. The figure is the median over runs. The targets file is JSON, as a
collector serves targets; ``--format yaml`` writes it as YAML, which the probe parses with
PyYAML at start, a transient of its own.

    python bench/rss.py [--targets 1000] [--seconds 40] [--runs 3] [--format json|yaml]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import median, servers


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(key)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--format", choices=("json", "yaml"), default="json")
    args = ap.parse_args()
    exe = shutil.which("popwatch-probe", path=str(Path(sys.executable).parent))
    assert exe, "popwatch-probe is not installed next to this Python"
    peaks = []
    with tempfile.TemporaryDirectory() as d, servers.knot() as knot:
        tf = Path(d) / "targets.yaml"
        targets = [
            {
                "name": f"ns-{i}",
                "topology": "anycast" if i % 2 else "unicast",
                "provider": f"provider-{i % 7}",
                "server": "127.0.0.1",
                "port": knot.port,
                "interval": 10,
                "timeout": 2,
                "queries": [{"qname": "example.test", "qtype": "SOA"}],
            }
            for i in range(args.targets)
        ]
        if args.format == "yaml":
            tf.write_text(yaml.safe_dump({"targets": targets}, sort_keys=False))
        else:
            tf.write_text(json.dumps({"targets": targets}))  # JSON is YAML
        for i in range(args.runs):
            out = Path(d) / "out.jsonl"
            proc = subprocess.Popen(
                [exe, "run", "--targets", str(tf), "--output", str(out), "--id", "rss-bench"],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(args.seconds)
            peak = vm(proc.pid, "VmHWM") / 1024
            rss = vm(proc.pid, "VmRSS") / 1024
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            n = sum(1 for _ in out.open())
            out.unlink()
            peaks.append(peak)
            print(
                f"run {i + 1}/{args.runs}: peak RSS {peak:.1f} MB (now {rss:.1f} MB), "
                f"{n} measurements in {args.seconds:.0f} s",
                flush=True,
            )
    print()
    print(
        f"peak RSS of `run` with {args.targets} targets at 10 s ({args.format} file), "
        f"median of {args.runs} runs: "
        f"{median(peaks):.1f} MB   (goal ≤ 40 MB)"
    )


if __name__ == "__main__":
    main()
