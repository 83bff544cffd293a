# One image for both parts of popwatch: `popwatch-probe` and `popwatch-collector`.
#   docker build -t popwatch .
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY probe ./probe
COPY collector ./collector
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/popwatch popwatch \
    && mkdir -p /var/lib/popwatch /run/popwatch/tokens \
    && chown -R popwatch /var/lib/popwatch /run/popwatch \
    && rm -rf /src

# Kernel software timestamps (SO_TIMESTAMPING) need no capability: the probe runs
# unprivileged. The spool (both parts) and the probe registry (collector) live here.
USER popwatch
WORKDIR /var/lib/popwatch
ENV POPWATCH_DATA_DIR=/var/lib/popwatch
VOLUME ["/var/lib/popwatch"]
CMD ["popwatch-probe", "--help"]
