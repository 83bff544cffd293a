# The measured server of the compose test: Knot DNS in a container of its own, serving
# example.test with NSID "knot-compose", on the local base (deploy/base-image.sh).
ARG BASE=localhost/popwatch-base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends knot \
    && rm -rf /var/lib/apt/lists/*
COPY knot.conf /etc/knot/knot.conf
COPY example.test.zone /var/lib/knot/example.test.zone
RUN mkdir -p /run/knot && chown -R knot:knot /var/lib/knot /run/knot
EXPOSE 53/udp 53/tcp
CMD ["knotd", "-c", "/etc/knot/knot.conf"]
