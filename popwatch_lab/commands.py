"""The lab's state and its commands: what ``fail``, ``restore``, ``degrade``, ``cut``,
``steer``, ``bump-serial``, ``status`` and ``down`` do to it, as a table.

A request is one JSON object, ``{"cmd": NAME, FIELD: VALUE...}``. ``COMMANDS`` says, for
each command, its fields, how each is checked, and the :class:`Lab` method that does it.
A request is checked whole before anything changes: a request that is not an object, an
unknown command or field, a missing one, a value of the wrong type, a figure that is
not finite or is out of range, a name the world lacks: a one-line :class:`BadRequest`,
and the lab as it was.

It is the lab's control plane: a failed site goes dark at once (its link drops every
packet) and its route is withdrawn ``convergence_s`` later, when the regions it served
move to their next nearest site, the way BGP converges after a PoP goes down; a
restored site answers at once and is announced ``convergence_s`` later. ``steer``
sends a region's anycast traffic to a site that is not its nearest, as a routing policy
(a local preference, a peering) would, while that site is announced; ``restore REGION``
lifts it.

The commands change the world through a :class:`Backend`: the data plane's parameters,
the backbone's routes, a region's link, a server's zone serial, a live query. The
daemon's backend is the built lab (:class:`popwatch_lab.build.BuiltLab`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from popwatch_lab import stack
from popwatch_lab.stack import LabConfig
from popwatch_lab.wire import MAX_MS, figure
from popwatch_lab.world import FIRST_SERIAL, WORLD, Node, World


class BadRequest(ValueError):
    """A request the lab does not take; the message is one line for its sender."""


class Backend(Protocol):
    """What the commands act on: the lab's network, servers and processes."""

    @property
    def run_dir(self) -> Path:
        """Where the lab keeps its files."""

    @property
    def shaper(self) -> str:
        """What delays the packets: "wire" or "netem"."""

    def shape(self, params: dict[str, dict[str, Any]]) -> None:
        """Give the data plane these per-server link parameters (see :meth:`Lab.params`)."""

    def routed_site(self, region: Node) -> str | None:
        """The site the backbone routes ``region``'s anycast packets to now."""

    def set_route(self, region: Node, site: Node | None) -> None:
        """Route ``region``'s anycast packets to ``site`` (None: nowhere)."""

    def set_region_link(self, region: Node, up: bool) -> None:
        """Cut ``region`` off the backbone, or mend it."""

    def set_serial(self, server: Node, serial: int) -> None:
        """Serve the zone at ``serial`` on ``server``."""

    def measure(self, region: Node) -> dict[str, Any]:
        """One query from ``region`` to the anycast address: rtt_ms, nsid, serial."""

    def processes(self) -> list[dict[str, Any]]:
        """The lab's processes: name, pid, alive."""

    def teardown(self) -> None:
        """Stop and remove everything (a second call does nothing)."""


@dataclass
class LinkState:
    """What a server's link does now: extra round-trip delay, inbound loss, dark."""

    extra_ms: float = 0.0
    loss: float = 0.0
    dark: bool = False

    @property
    def healthy(self) -> bool:
        return not (self.extra_ms or self.loss or self.dark)


# ----------------------------------------------------------------------------- field checks


def _show(value: object) -> str:
    """``value`` for an error line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {_show(value)}")
    return value


def check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {_show(value)}")
    return value


def check_ms(value: object, name: str) -> float:
    """A finite number of milliseconds, from 0 to the wire's ``MAX_MS``."""
    try:
        return figure(value, name, MAX_MS)
    except ValueError:
        raise BadRequest(
            f"{name} must be a number from 0 to {MAX_MS:g}, not {_show(value)}"
        ) from None


def check_share(value: object, name: str) -> float:
    """A finite number from 0 to 1."""
    try:
        return figure(value, name, 1.0)
    except ValueError:
        raise BadRequest(f"{name} must be a number from 0 to 1, not {_show(value)}") from None


def check_names(value: object, name: str) -> list[str] | None:
    """None, or a list of one or more names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > 64:
        raise BadRequest(f"{name} must be a list of names, or null, not {_show(value)}")
    return [check_text(v, name) for v in value]


REQUIRED: Final = object()


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[object, str], Any]
    default: Any = REQUIRED


@dataclass(frozen=True)
class Command:
    """One command: the method that does it, called with its fields as keywords."""

    run: Callable[..., dict[str, Any]]
    fields: tuple[Field, ...] = ()


# ----------------------------------------------------------------------------- the lab


class Lab:
    """One lab's state, and the commands that change it (through ``backend``)."""

    def __init__(self, cfg: LabConfig, backend: Backend, world: World = WORLD) -> None:
        self.cfg = cfg
        self.backend = backend
        self.world = world
        self.lock = threading.RLock()  # one command at a time
        self.started = time.time()
        #: what BGP sees: the sites announced now
        self.announced = set(world.site_names)
        #: per server: what its link does now
        self.links = {n.name: LinkState() for n in world.servers}
        self.serials = {n.name: FIRST_SERIAL for n in world.servers}
        self.cut: set[str] = set()
        #: region -> the site a routing policy sends its anycast traffic to
        self.steered: dict[str, str] = {}
        #: site -> (announce it?, when): the convergence on its way
        self.pending: dict[str, tuple[bool, float]] = {}
        self.generation = dict.fromkeys(world.site_names, 0)
        self.history: list[dict[str, Any]] = []
        self.stopping = False  # down has begun: no command but down is taken
        self.closed = False  # torn down
        self.stopped = threading.Event()  # down is done (or SIGTERM): the daemon ends

    # ------------------------------------------------------------------ requests

    def parse(self, req: object) -> tuple[Command, dict[str, Any]]:
        """The command a request names and its checked fields; BadRequest otherwise."""
        if not isinstance(req, dict):
            raise BadRequest(f"a request is a JSON object with a cmd, not {_show(req)}")
        name = req.get("cmd")
        command = COMMANDS.get(name) if isinstance(name, str) else None
        if command is None:
            raise BadRequest(f"unknown command {_show(name)} (commands: {', '.join(COMMANDS)})")
        known = {f.name for f in command.fields}
        extra = sorted(str(k) for k in req if k != "cmd" and k not in known)
        if extra:
            raise BadRequest(f"{name} takes no field {_show(extra[0])}")
        kwargs = {}
        for f in command.fields:
            if f.name in req:
                kwargs[f.name] = f.check(req[f.name], f.name)
            elif f.default is REQUIRED:
                raise BadRequest(f"{name} needs {f.name}")
            else:
                kwargs[f.name] = f.default
        return command, kwargs

    def handle(self, req: object) -> dict[str, Any]:
        """Do what ``req`` asks; its answer. BadRequest when it cannot be done."""
        command, kwargs = self.parse(req)
        with self.lock:
            if self.stopping and command.run is not Lab.down:
                raise BadRequest("the lab is going down")
            return command.run(self, **kwargs)

    def close(self) -> None:
        """Take the lab down (``down``, SIGTERM, or the daemon's end); once."""
        with self.lock:
            if self.closed:
                return
            self.stopping = self.closed = True
            self.backend.teardown()
            self.stopped.set()

    # ------------------------------------------------------------------ helpers

    def node(self, name: str, kinds: tuple[str, ...], what: str) -> Node:
        """The world's node ``name`` if it is of ``kinds``; BadRequest otherwise."""
        node = self.world.names.get(name)
        if node is None or node.kind not in kinds:
            choices = [n.name for n in self.world.names.values() if n.kind in kinds]
            raise BadRequest(f"no {what} {_show(name)} ({what}s: {', '.join(choices)})")
        return node

    def params(self) -> dict[str, dict[str, Any]]:
        """Per server link: the path of each region ([rtt_ms, jitter_ms]) and its state."""
        out: dict[str, dict[str, Any]] = {}
        for server, rtts in self.world.rtt_matrix().items():
            paths = {r: [rtt, self.cfg.jitter(rtt)] for r, rtt in rtts.items()}
            out[server] = {"paths": paths, **asdict(self.links[server])}
        return out

    def shape(self) -> None:
        self.backend.shape(self.params())

    def apply_routes(self) -> list[dict[str, Any]]:
        """Point every region at its nearest announced site; the moves made."""
        moves = []
        for region, site in self.world.catchment(self.announced).items():
            policy = self.steered.get(region)
            if policy in self.announced:  # a steered region goes there while it can
                site = policy
            node = self.world.region(region)
            before = self.backend.routed_site(node)
            if before == site and site is not None:
                continue
            self.backend.set_route(node, self.world.site(site) if site else None)
            if before is not None or site is not None:
                moves.append({"region": region, "from": before, "to": site})
        return moves

    def log(self, what: str, **more: Any) -> dict[str, Any]:
        entry = {"at": time.time(), "what": what, **more}
        self.history.append(entry)
        return entry

    def converge_later(self, site: str, announce: bool) -> float:
        """After ``convergence_s``, announce (or withdraw) ``site``; the time it is due.
        A later command on the site supersedes it."""
        self.generation[site] += 1
        gen = self.generation[site]
        due = time.time() + self.cfg.convergence_s
        self.pending[site] = (announce, due)

        def converge() -> None:
            with self.lock:
                if self.generation[site] != gen or self.stopping:
                    return
                del self.pending[site]
                if announce:
                    self.announced.add(site)
                else:
                    self.announced.discard(site)
                moves = self.apply_routes()
                self.log("announced" if announce else "withdrawn", site=site, moves=moves)

        timer = threading.Timer(self.cfg.convergence_s, converge)
        timer.daemon = True
        timer.start()
        return due

    def cancel_convergence(self, site: str) -> None:
        self.generation[site] += 1
        self.pending.pop(site, None)

    # ------------------------------------------------------------------ commands
    # each answers what it did; ``changed`` false when there was nothing to do

    def fail(self, site: str) -> dict[str, Any]:
        self.node(site, ("site",), "site")
        link = self.links[site]
        if link.dark:
            due = self.pending.get(site, (False, None))[1]
            return {"failed": site, "changed": False, "converges_at": due}
        link.dark = True
        self.shape()
        due = self.converge_later(site, announce=False)
        entry = self.log("failed", site=site, converges_at=due)
        return {"failed": site, "changed": True, "at": entry["at"], "converges_at": due}

    def restore(self, name: str) -> dict[str, Any]:
        node = self.node(name, ("site", "unicast", "region"), "site or region")
        if node.kind == "region":
            if name not in self.cut and name not in self.steered:
                return {"restored": name, "changed": False, "converges_at": None}
            if name in self.cut:
                self.backend.set_region_link(node, up=True)
                self.cut.discard(name)
            moves = []
            if self.steered.pop(name, None) is not None:
                moves = self.apply_routes()
            entry = self.log("mended", region=name, moves=moves)
            return {"restored": name, "changed": True, "at": entry["at"], "converges_at": None}
        link = self.links[name]
        pending = self.pending.get(name)
        if link.healthy:  # nothing to undo; an announcement may be on its way
            due = pending[1] if pending and pending[0] else None
            return {"restored": name, "changed": False, "converges_at": due}
        self.links[name] = LinkState()
        self.shape()
        due = None
        if node.kind == "site":
            if name in self.announced:
                self.cancel_convergence(name)  # its withdrawal is off: no route moved
            else:
                due = self.converge_later(name, announce=True)
        entry = self.log("restored", site=name, converges_at=due)
        return {"restored": name, "changed": True, "at": entry["at"], "converges_at": due}

    def degrade(self, site: str, delay_ms: float, loss: float) -> dict[str, Any]:
        self.node(site, ("site", "unicast"), "site")
        link = self.links[site]
        link.extra_ms, link.loss = delay_ms, loss
        self.shape()
        entry = self.log("degraded", site=site, delay_ms=delay_ms, loss=loss)
        return {"degraded": site, "at": entry["at"]}

    def cut_region(self, region: str) -> dict[str, Any]:
        node = self.node(region, ("region",), "region")
        if region in self.cut:
            return {"cut": region, "changed": False}
        self.backend.set_region_link(node, up=False)
        self.cut.add(region)
        entry = self.log("cut", region=region)
        return {"cut": region, "changed": True, "at": entry["at"]}

    def steer(self, region: str, site: str) -> dict[str, Any]:
        """Route ``region``'s anycast traffic to ``site`` at once (while it is announced;
        its nearest announced site otherwise), until ``restore REGION``."""
        self.node(region, ("region",), "region")
        self.node(site, ("site",), "site")
        if self.steered.get(region) == site:
            return {"steered": region, "to": site, "changed": False, "moves": []}
        self.steered[region] = site
        moves = self.apply_routes()
        entry = self.log("steered", region=region, site=site, moves=moves)
        return {"steered": region, "to": site, "changed": True, "at": entry["at"], "moves": moves}

    def bump_serial(self, sites: list[str] | None) -> dict[str, Any]:
        servers = [n.name for n in self.world.servers]
        nodes = [self.node(s, ("site", "unicast"), "site") for s in sites or servers]
        serial = max(self.serials.values()) + 1
        for node in nodes:
            self.serials[node.name] = serial
            self.backend.set_serial(node, serial)
        names = [n.name for n in nodes]
        entry = self.log("serial", serial=serial, sites=names)
        return {"serial": serial, "sites": names, "at": entry["at"]}

    def status(self, measure: bool) -> dict[str, Any]:
        rtts = self.world.rtt_matrix()
        measured: dict[str, dict[str, Any]] = {}
        if measure:
            threads = []
            for r in self.world.regions:

                def one(r: Node = r) -> None:
                    measured[r.name] = self.backend.measure(r)

                t = threading.Thread(target=one)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        regions = []
        for r in self.world.regions:
            site = self.backend.routed_site(r)
            regions.append(
                {
                    "name": r.name,
                    "probe": stack.probe_id(r),
                    "city": r.place.city,
                    "site": site,
                    "path_rtt_ms": rtts[site][r.name] if site else None,
                    "unicast_rtt_ms": rtts[self.world.unicast.name][r.name],
                    "extra_ms": self.links[site].extra_ms if site else 0.0,
                    "cut": r.name in self.cut,
                    "steered": self.steered.get(r.name),
                    "nearest": self.world.nearest(r.name, self.announced),
                    "measured": measured.get(r.name),
                }
            )
        servers = [
            {
                "name": n.name,
                "kind": n.kind,
                "city": n.place.city,
                "address": n.v4,
                "announced": n.name in self.announced if n.kind == "site" else None,
                "serial": self.serials[n.name],
                **asdict(self.links[n.name]),
            }
            for n in self.world.servers
        ]
        return {
            "started": self.started,
            "run_dir": str(self.backend.run_dir),
            "shaper": self.backend.shaper,
            "config": json.loads(self.cfg.to_json()),
            "regions": regions,
            "servers": servers,
            "urls": stack.urls(),
            "processes": self.backend.processes(),
            "history": self.history,
        }

    def down(self) -> dict[str, Any]:
        """Everything stopped and removed before the answer; then the daemon ends."""
        self.close()
        return {"down": True}


#: the commands, by the name a request gives in ``cmd``
COMMANDS: Final = {
    "status": Command(Lab.status, (Field("measure", check_flag, True),)),
    "fail": Command(Lab.fail, (Field("site", check_text),)),
    "restore": Command(Lab.restore, (Field("name", check_text),)),
    "degrade": Command(
        Lab.degrade,
        (
            Field("site", check_text),
            Field("delay_ms", check_ms),
            Field("loss", check_share, 0.0),
        ),
    ),
    "cut": Command(Lab.cut_region, (Field("region", check_text),)),
    "steer": Command(Lab.steer, (Field("region", check_text), Field("site", check_text))),
    "bump-serial": Command(Lab.bump_serial, (Field("sites", check_names, None),)),
    "down": Command(Lab.down),
}
