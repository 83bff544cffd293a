"""Asks: on-demand measurements from chosen probes, and failover drills.

An operator (``popwatch-collector operators add``) posts an ask (``POST /api/v1/asks``):
a check kind, a target, options, where to ask from, how many times. The collector picks
the probes (``select``), keeps the ask in InfluxDB (the ``ask`` measurement: every
collector behind a load balancer reads it, ``board``), and hands it to each chosen
probe's command long-poll (``GET /api/v1/commands``). Probes post their results straight
back (``POST /api/v1/asks/ID/results``) and ship them the normal way too, each record
tagged with the ask's id; ``GET /api/v1/asks/ID`` and its ``/stream`` read them from
InfluxDB. A drill's site changes are worked out by ``drill`` and written as ``event``s.
The handlers are ``api``; the command line (``ask``, ``operators``) is ``cli``.
"""
