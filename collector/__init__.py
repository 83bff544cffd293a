"""popwatch collector: authenticated ingest of probe measurements into InfluxDB."""

__version__ = "0.1.0"
