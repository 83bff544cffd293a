"""The lab's daemon: it builds the world, holds it, changes it on command, and takes it
down. ``popwatch-lab up`` starts it; every other command talks to it over
``RUN/control.sock`` (one JSON request, one JSON answer).

Three parts, each its own module:

* :mod:`popwatch_lab.build`: building the world and taking it down, and the hands the
  commands change it with (:class:`~popwatch_lab.build.BuiltLab`);
* :mod:`popwatch_lab.commands`: the lab's state and its commands, a table
  (:class:`~popwatch_lab.commands.Lab`, ``COMMANDS``);
* :mod:`popwatch_lab.control`: the control socket
  (:class:`~popwatch_lab.control.ControlServer`).

Run by ``up``: ``python -m popwatch_lab.daemon --run-dir DIR --config JSON``. It prints
its progress, then ``ready`` (or one ``error:`` line, having cleaned up), and from then
on logs to ``DIR/logs/daemon.log``. It ends after ``down``, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from popwatch_lab.build import BuiltLab
from popwatch_lab.commands import Lab
from popwatch_lab.control import ControlServer
from popwatch_lab.procs import sbin_on_path
from popwatch_lab.stack import LabConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--config", required=True, help="LabConfig as JSON")
    args = ap.parse_args()
    sbin_on_path()
    built = BuiltLab(args.run_dir, LabConfig.from_json(args.config))
    lab = Lab(built.cfg, built)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        built.build_network(say, lab.params())
        lab.apply_routes()
        built.start(say)
        server = ControlServer(args.run_dir / "control.sock", lab.handle)
    except Exception as exc:  # any failure: say it in one line, and clean up
        say(f"error: {exc}".replace("\n", " ")[:2000])
        built.teardown()
        sys.exit(1)
    say("ready")
    # from now on nobody reads the pipe: standard output and error go to the log
    log = os.open(args.run_dir / "logs" / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.signal(signal.SIGTERM, lambda *_: lab.stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        server.serve(lab.stopped)
    lab.close()


if __name__ == "__main__":
    main()
