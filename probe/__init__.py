"""popwatch probe: exact DNS latency measurements."""

__version__ = "0.1.0"

#: the User-Agent of every HTTP request the probe makes (page fetches, DoH, shipping)
USER_AGENT = f"popwatch-probe/{__version__}"
