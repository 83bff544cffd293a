"""popwatch's Grafana dashboards, generated from Python code.

``dashboards.build.build_all()`` gives each dashboard's JSON model;
``python -m dashboards`` (or ``popwatch-collector dashboards build``) writes
them to ``dashboards/json/``, where
Grafana's file provisioning reads them, and a test fails when the committed files differ
from what the code generates. The dashboards are built with grafana-foundation-sdk (the
release for Grafana 11.6); their queries are InfluxQL from
:mod:`dashboards.influxql`.
"""

from __future__ import annotations

from typing import Final

#: the Grafana version the pinned grafana-foundation-sdk release targets
GRAFANA_VERSION: Final = "11.6"
