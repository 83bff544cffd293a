"""The alert engine: regional, quorum-based alerts over what InfluxDB holds.

``Engine`` evaluates the rules of an ``AlertsConfig`` (``load_alerts``) with InfluxQL
(``InfluxQL``) and hands state changes to the notifiers (``notifiers_for``). The
collector runs it (``collector.alerts.cli.evaluator``) when ``alerts.enabled`` is true.
"""

from collector.alerts.config import AlertsConfig, load_alerts
from collector.alerts.engine import Engine, StepResult, notifiers_for
from collector.store.influxql import InfluxQL, QueryError

__all__ = [
    "AlertsConfig",
    "Engine",
    "InfluxQL",
    "QueryError",
    "StepResult",
    "load_alerts",
    "notifiers_for",
]
