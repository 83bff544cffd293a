# One image for both parts of popwatch: `popwatch-probe` and `popwatch-collector`.
#   docker build -t popwatch .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/popwatch:TAG --push .
#
# BASE is any Debian-like image with Python 3.11+ and its venv module: the official
# python image by default, or a base built locally (deploy/base-image.sh) where no
# registry can be reached.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# where the package index is reached through a proxy with its own CA, mount the CA bundle
# into the build and name it: --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_CERT
# EXTRAS=dashboards adds the Grafana libraries, for `popwatch-collector dashboards push`
# from a collector image (docker build --build-arg EXTRAS=dashboards); the default image,
# probes and collectors alike, runs without them
ARG EXTRAS=
# the dependencies are pinned, with hashes, in requirements.lock (pip-compile; the
# dashboards extra in requirements-dashboards.lock, over it); the HTTP check relies on
# aiohttp internals (tests/test_aiohttp_internals.py), so no drift
COPY requirements.lock requirements-dashboards.lock /src/
RUN case "$EXTRAS" in ""|dashboards) ;; *) echo "EXTRAS is empty or dashboards" >&2; exit 2;; esac \
    && python3 -m venv /opt/popwatch \
    && /opt/popwatch/bin/pip install --no-cache-dir --require-hashes -r /src/requirements.lock \
        ${EXTRAS:+-r /src/requirements-${EXTRAS}.lock}
COPY pyproject.toml README.md /src/
COPY probe /src/probe
COPY collector /src/collector
COPY dashboards /src/dashboards
COPY popwatch_lab /src/popwatch_lab
RUN /opt/popwatch/bin/pip install --no-cache-dir --no-deps /src

FROM ${BASE}
COPY --from=build /opt/popwatch /opt/popwatch
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/popwatch popwatch \
    && mkdir -p /var/lib/popwatch /var/lib/popwatch-ca /run/popwatch/tokens /run/popwatch/certs \
    && chown -R popwatch:popwatch /var/lib/popwatch /var/lib/popwatch-ca /run/popwatch
ENV PATH=/opt/popwatch/bin:$PATH \
    POPWATCH_DATA_DIR=/var/lib/popwatch \
    PYTHONDONTWRITEBYTECODE=1

# Kernel software timestamps (SO_TIMESTAMPING) need no capability, nor do ICMP ping
# sockets where net.ipv4.ping_group_range admits the group: the probe runs unprivileged.
# The spool (both parts) and the probe registry (collector) live in the volume.
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /var/lib/popwatch
VOLUME ["/var/lib/popwatch"]
# /healthz of the collector (POPWATCH_LISTEN) or of the probe (POPWATCH_METRICS_LISTEN);
# POPWATCH_HEALTH_URL overrides both
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["popwatch-healthcheck"]
CMD ["popwatch-probe", "--help"]
