# A stand-in for influxdb:2.7 in the compose test: no registry image can be pulled here,
# so Debian's InfluxDB 1.6.7 (the v1 API; the collector finds that out from /ping) on
# the local base (deploy/base-image.sh).
ARG BASE=localhost/popwatch-base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends influxdb \
    && rm -rf /var/lib/apt/lists/*
USER influxdb
EXPOSE 8086
CMD ["influxd", "-config", "/etc/influxdb/influxdb.conf"]
