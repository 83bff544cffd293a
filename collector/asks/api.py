"""The asks' handlers, on the public API next to the probes'.

For operators (``Authorization: Bearer <operator token>``; a probe token gets 403, a
missing, unknown or revoked one 401):

* ``POST /api/v1/asks``: make an ask; ``202`` with its id and ``Location``, the chosen
  probes and the ones skipped with why. A bound of ``limits`` it would pass is a ``403``
  (``429`` for the rates of the asks running now) naming the key.
* ``GET /api/v1/asks/{id}``: its status (``in-progress``, ``finished``), each chosen
  probe's state, the results so far (and a drill's figures), with an ETag.
* ``GET /api/v1/asks/{id}/stream``: Server-Sent Events, one ``result`` event per result
  and a ``finished`` event with the status at the end.

For probes (their own token):

* ``GET /api/v1/commands?wait_s=S&have=ID,ID``: the long-poll; the asks for this probe
  it does not have yet, as soon as one is made (``{"commands": [...]}``, empty after
  ``wait_s``).
* ``POST /api/v1/asks/{id}/results``: a batch of its results (the wire's batch), each
  record carrying the ask's id, checked as ingest checks records.
* ``POST /api/v1/asks/{id}/state``: ``done`` or ``refused`` (``probe.wire.AskState``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from typing import Any, Final

import msgspec
from aiohttp import web

from collector.asks.board import POLL_S, Board
from collector.asks.drill import analyse
from collector.asks.model import Ask, AskRequest, Skipped, in_networks
from collector.asks.select import choose
from collector.identity import Identity
from collector.ingest.api import STATE, identity, lines_of, read_body, slow_down
from collector.ingest.registry import OPERATOR_PREFIX
from collector.ingest.validate import NotABatch, decode
from collector.kinds import BY_NAME
from collector.store.influxql import QueryError
from collector.store.lineproto import MAX_STRING_BYTES
from collector.store.sink import SinkUnavailable, encode
from probe.configfile import explain
from probe.wire import NS, AskState, Commands, Measurement

log = logging.getLogger("popwatch.collector.asks")
#: one line per ask made: who, what, from where, how much
audit = logging.getLogger("popwatch.collector.audit")

BOARD = web.AppKey("board", Board)
MAX_ASK_BODY_BYTES: Final = 64 * 1024
_ID_RE: Final = re.compile(r"^[0-9a-f]{16}$")
_encoder: Final = msgspec.json.Encoder()


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    return web.json_response({"error": reason, **extra}, status=status, headers=headers)


def _operator(request: web.Request) -> str | web.Response:
    """The operator a request's token names, or the 401/403 saying why not."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return _error(401, "missing 'Authorization: Bearer <operator token>'")
    token = auth.removeprefix("Bearer ").strip()
    registry = request.app[STATE].registry
    if not token.startswith(OPERATOR_PREFIX):
        if registry.authenticate(token) is not None:
            return _error(
                403,
                "a probe token: asks take an operator token (popwatch-collector operators add)",
            )
        return _error(401, "unknown or revoked token")
    name = registry.authenticate_operator(token)
    if name is None:
        return _error(401, "unknown or revoked operator token")
    return name


def _ask_id(request: web.Request) -> str | web.Response:
    ask_id = request.match_info["id"]
    if not _ID_RE.match(ask_id):
        return _error(404, f"no ask {ask_id[:40]!r}: an ask's id is 16 hex digits")
    return ask_id


def _who(identity_of: dict[str, Identity], probe: str) -> dict[str, Any]:
    i = identity_of.get(probe)
    if i is None:
        return {"probe": probe}
    return {
        "probe": i.probe,
        "region": i.region,
        "country": i.country,
        "city": i.city,
        "asn": i.asn,
    }


# --------------------------------------------------------------------------- operators


async def make(request: web.Request) -> web.Response:
    """``POST /api/v1/asks``."""
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    board = request.app[BOARD]
    state = request.app[STATE]
    limits = state.limits
    if (request.content_length or 0) > MAX_ASK_BODY_BYTES:
        return _error(413, f"an ask is at most {MAX_ASK_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_ASK_BODY_BYTES + 1)
    if len(raw) > MAX_ASK_BODY_BYTES:
        return _error(413, f"an ask is at most {MAX_ASK_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
        req = msgspec.convert(data, AskRequest, strict=True)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, msgspec.ValidationError):
            fault = explain(AskRequest, data, exc, strict=True)
            return _error(400, f"{fault.path}: {fault.text}" if fault.path else fault.text)
        return _error(400, f"not an ask: not JSON ({exc})")
    kind = BY_NAME.get(req.type)
    if kind is None or kind.ask is None:
        can = ", ".join(k.name for k in BY_NAME.values() if k.ask is not None)
        return _error(400, f"type: {req.type[:40]!r} is not one of {can}")
    askable = kind.ask
    try:
        spec = askable.spec(req.target, req.options)
        target = msgspec.convert(spec, askable.target_type, strict=True)
    except msgspec.ValidationError as exc:
        fault = explain(askable.target_type, spec, exc, strict=True)
        where = f"options.{fault.path}" if fault.path else "target"
        return _error(400, f"{where}: {fault.text}")
    except ValueError as exc:
        return _error(400, str(exc))
    host, series = askable.host(target), askable.series(target)
    # the bounds that hold whatever else runs: 403, naming the key
    duration = (req.count - 1) * req.interval_s
    if duration > limits.max_ask_duration_s:
        return _error(
            403,
            f"over limits.max_ask_duration_s: {req.count} x {req.interval_s:g} s is "
            f"{duration:g} s; at most {limits.max_ask_duration_s:g} s",
        )
    if req.limit > limits.max_ask_probes:
        return _error(
            403,
            f"over limits.max_ask_probes: {req.limit} probes asked, "
            f"at most {limits.max_ask_probes}",
        )
    qps = series / (req.interval_s if req.count > 1 else 1.0)
    if qps > limits.max_ask_qps_per_probe:
        return _error(
            403,
            f"over limits.max_ask_qps_per_probe: {series} queries every {req.interval_s:g} s "
            f"is {qps:g}/s per probe; at most {limits.max_ask_qps_per_probe:g}/s",
        )
    nets = limits.ask_target_networks
    if nets and in_networks(host, nets) is False:
        return _error(
            403, f"over limits.ask_target_networks: {host} is in none of {', '.join(nets)}"
        )
    active = {i.identity.probe: i.identity for i in state.registry.list() if not i.revoked_at}
    try:
        chosen, skipped = await choose(req, active.values(), board.influx)
        await board.refresh(limits.max_ask_duration_s + 60)  # what others run now, too
    except QueryError as exc:
        return _error(503, f"cannot read InfluxDB now: {exc}")
    if not chosen:
        return _error(
            422,
            "no probe matches the locations" + (" and is healthy" if skipped else ""),
            skipped=[msgspec.structs.asdict(s) for s in skipped],
        )
    running = board.active()
    for who in chosen:
        busy = sum(a.qps for a in running if who.probe in a.probes)
        if busy + qps > limits.max_ask_qps_per_probe:
            return _error(
                429,
                f"over limits.max_ask_qps_per_probe: probe {who.probe} runs asks of "
                f"{busy:g} queries/s now; this one adds {qps:g}/s, over "
                f"{limits.max_ask_qps_per_probe:g}/s",
            )
    to_target = sum(a.qps * len(a.probes) for a in running if a.host == host)
    adds = qps * len(chosen)
    if to_target + adds > limits.max_ask_qps_per_target:
        return _error(
            429,
            f"over limits.max_ask_qps_per_target: asks send {to_target:g} queries/s to "
            f"{host} now; this one adds {adds:g}/s, over {limits.max_ask_qps_per_target:g}/s",
        )
    ask = Ask(
        id=secrets.token_hex(8),
        operator=operator,
        kind=kind.name,
        target=req.target,
        spec=spec,
        host=host,
        count=req.count,
        interval_s=req.interval_s,
        timeout_s=float(getattr(target, "timeout", 5.0)),
        series=series,
        probes=[c.probe for c in chosen],
        skipped=skipped[:200],
        allow=list(nets),
        drill=req.drill,
        created_at=board.clock_ns(),
    )
    if len(_encoder.encode(ask)) > MAX_STRING_BYTES:
        return _error(413, "the ask is too large to keep (fewer probes, shorter options)")
    try:
        await board.write(ask)
    except SinkUnavailable as exc:
        return _error(503, f"cannot keep the ask now: {exc}")
    board.add(ask)
    audit.info(
        "ask %s by %s: %s %s%s, %d x every %g s from %d probes (%s)%s",
        ask.id,
        operator,
        ask.kind,
        req.target,
        " (drill)" if ask.drill else "",
        ask.count,
        ask.interval_s,
        len(ask.probes),
        ", ".join(ask.probes),
        f"; {len(skipped)} skipped" if skipped else "",
    )
    location = f"/api/v1/asks/{ask.id}"
    body = {
        "id": ask.id,
        "status": "in-progress",
        "location": location,
        "probes": [_who(active, p) for p in ask.probes],
        "skipped": [msgspec.structs.asdict(s) for s in skipped],
    }
    return web.json_response(body, status=202, headers={"Location": location})


async def _status(request: web.Request, board: Board, ask: Ask) -> dict[str, Any]:
    """The body of ``GET /api/v1/asks/{id}``."""
    over, states = await board.finished(ask)
    rows = await board.results(ask)
    identities = {r.identity.probe: r.identity for r in request.app[STATE].registry.list()}
    counted: dict[str, int] = {}
    for r in rows:
        counted[r.get("probe", "")] = counted.get(r.get("probe", ""), 0) + 1
    probes = []
    for p in ask.probes:
        said = states.get(p)
        if said is not None:
            entry = {**_who(identities, p), **{k: v for k, v in said.items() if v is not None}}
        else:
            got = counted.get(p, 0)
            now = {(True, True): "cut short", (True, False): "no answer"}.get(
                (over, bool(got)), "running" if got else "waiting"
            )
            entry = {**_who(identities, p), "state": now}
        entry["results"] = counted.get(p, 0)
        probes.append(entry)
    body: dict[str, Any] = {
        "id": ask.id,
        "status": "finished" if over else "in-progress",
        "type": ask.kind,
        "target": ask.target,
        "operator": ask.operator,
        "created_at": ask.created_at,
        "count": ask.count,
        "interval_s": ask.interval_s,
        "drill": ask.drill,
        "probes": probes,
        "skipped": [msgspec.structs.asdict(s) for s in ask.skipped],
        "results": rows,
    }
    askable = BY_NAME[ask.kind].ask
    if ask.drill and askable is not None:
        body["figures"] = [r.as_json() for r in analyse(rows, askable.value)]
    return body


async def _found(request: web.Request) -> tuple[Board, Ask] | web.Response:
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    ask_id = _ask_id(request)
    if isinstance(ask_id, web.Response):
        return ask_id
    board = request.app[BOARD]
    try:
        ask = await board.find(ask_id)
    except QueryError as exc:
        return _error(503, f"cannot read InfluxDB now: {exc}")
    if ask is None:
        keep = request.app[STATE].limits.ask_keep_s
        return _error(404, f"no ask {ask_id} (asks are kept {keep:g} s: limits.ask_keep_s)")
    return board, ask


async def show(request: web.Request) -> web.Response:
    """``GET /api/v1/asks/{id}``, with an ETag (``If-None-Match``: 304)."""
    found = await _found(request)
    if isinstance(found, web.Response):
        return found
    board, ask = found
    try:
        body = _encoder.encode(await _status(request, board, ask))
    except QueryError as exc:
        return _error(503, f"cannot read InfluxDB now: {exc}")
    etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


def _key(row: dict[str, Any], tags: tuple[str, ...]) -> tuple[Any, ...]:
    return (row.get("time"), *(row.get(t) for t in tags))


#: results are looked for this far before the newest one sent (they arrive out of order)
STREAM_LOOKBACK_NS: Final = 15 * NS
KEEPALIVE_S: Final = 15.0


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/asks/{id}/stream``: one ``result`` event per result, as each
    arrives, then ``finished``."""
    found = await _found(request)
    if isinstance(found, web.Response):
        return found
    board, ask = found
    tags = BY_NAME[ask.kind].tags
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    seen: dict[tuple[Any, ...], int] = {}
    newest = ask.created_at - NS
    idle = 0.0
    try:
        while True:
            over, _ = await board.finished(ask)
            rows = await board.results(
                ask, since=max(ask.created_at - NS, newest - STREAM_LOOKBACK_NS)
            )
            sent = 0
            for row in rows:
                k = _key(row, tags)
                if k in seen:
                    continue
                seen[k] = int(row["time"])
                newest = max(newest, int(row["time"]))
                await resp.write(b"event: result\ndata: " + _encoder.encode(row) + b"\n\n")
                sent += 1
            cutoff = newest - 2 * STREAM_LOOKBACK_NS
            if len(seen) > 10_000:
                seen = {k: t for k, t in seen.items() if t >= cutoff}
            if board.closing:
                break  # the collector stops: the client reads /asks/ID elsewhere
            if over:
                body = _encoder.encode(await _status(request, board, ask))
                await resp.write(b"event: finished\ndata: " + body + b"\n\n")
                break
            if sent:
                idle = 0.0
            elif idle >= KEEPALIVE_S:
                await resp.write(b": still here\n\n")
                idle = 0.0
            await board.changed(ask.id, wait_s=2 * POLL_S)
            idle += 2 * POLL_S
    except (ConnectionResetError, QueryError) as exc:
        log.debug("stream of ask %s ended: %s", ask.id, exc)
    return resp


# --------------------------------------------------------------------------- probes


async def commands(request: web.Request) -> web.Response:
    """``GET /api/v1/commands?wait_s=S&have=ID,...``: the long-poll."""
    who = identity(request)
    if isinstance(who, web.Response):
        return who
    limits = request.app[STATE].limits
    try:
        wait_s = float(request.query.get("wait_s", "25"))
    except ValueError:
        return _error(400, f"wait_s: {request.query['wait_s'][:20]!r} is not a number of seconds")
    if not wait_s >= 0:
        return _error(400, "wait_s: must be >= 0")
    have = {h for h in request.query.get("have", "").split(",") if h}
    if len(have) > 256 or not all(_ID_RE.match(h) for h in have):
        return _error(400, "have: at most 256 ask ids (16 hex digits), comma-separated")
    found = await request.app[BOARD].wait(who.probe, have, min(wait_s, limits.max_command_wait_s))
    return web.Response(body=_encoder.encode(Commands(found)), content_type="application/json")


async def _probe_ask(request: web.Request) -> tuple[Identity, Ask] | web.Response:
    who = identity(request)
    if isinstance(who, web.Response):
        return who
    if (busy := slow_down(request, who.probe)) is not None:
        return busy
    ask_id = _ask_id(request)
    if isinstance(ask_id, web.Response):
        return ask_id
    try:
        ask = await request.app[BOARD].find(ask_id)
    except QueryError as exc:
        return _error(503, f"cannot read InfluxDB now: {exc}")
    if ask is None:
        return _error(404, f"no ask {ask_id}")
    if who.probe not in ask.probes:
        return _error(403, f"probe {who.probe} was not asked in ask {ask_id}")
    return who, ask


async def results(request: web.Request) -> web.Response:
    """``POST /api/v1/asks/{id}/results``: a batch of a probe's results of the ask."""
    found = await _probe_ask(request)
    if isinstance(found, web.Response):
        return found
    who, ask = found
    body = await read_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        _, records = decode(body)
    except NotABatch as exc:
        return _error(400, str(exc))

    def of_this_ask(record: Measurement) -> str | None:
        got = getattr(record, "ask", None)
        return None if got == ask.id else f"ask: {got!r} is not this ask ({ask.id})"

    lines, rejected = lines_of(request, who, records, of_this_ask)
    try:
        await request.app[STATE].sink.write(encode(lines))
    except SinkUnavailable as exc:
        return _error(503, f"cannot store now: {exc}")
    request.app[BOARD].notify(ask.id)
    return web.json_response({"accepted": len(lines), "rejected": rejected, "duplicate": False})


async def said(request: web.Request) -> web.Response:
    """``POST /api/v1/asks/{id}/state``: the probe is done, or refuses."""
    found = await _probe_ask(request)
    if isinstance(found, web.Response):
        return found
    who, ask = found
    raw = await request.content.read(4097)
    try:
        state = msgspec.json.decode(raw[:4096], type=AskState)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, f"not an ask state: {exc}")
    try:
        await request.app[BOARD].write_state(ask, who.probe, state)
    except SinkUnavailable as exc:
        return _error(503, f"cannot store now: {exc}")
    if state.state == "refused":
        log.info("ask %s: probe %s refused it: %s", ask.id, who.probe, state.message)
    return web.json_response({"ok": True})


def add_routes(app: web.Application, board: Board) -> None:
    """The asks' routes on the public API's app, and the board they share."""
    app[BOARD] = board
    app.router.add_post("/api/v1/asks", make)
    app.router.add_get("/api/v1/asks/{id}", show)
    app.router.add_get("/api/v1/asks/{id}/stream", stream)
    app.router.add_post("/api/v1/asks/{id}/results", results)
    app.router.add_post("/api/v1/asks/{id}/state", said)
    app.router.add_get("/api/v1/commands", commands)


__all__ = ["BOARD", "Skipped", "add_routes"]
