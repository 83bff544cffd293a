"""popwatch probe: exact DNS latency measurements."""

__version__ = "0.1.0"
