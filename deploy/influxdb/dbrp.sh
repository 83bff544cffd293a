#!/bin/sh
# Run once by the influxdb:2.7 image after its first setup (DOCKER_INFLUXDB_INIT_*):
# map the InfluxQL database "popwatch" (retention policy "autogen") to the bucket, so
# that the dashboards' and the alert engine's InfluxQL runs on InfluxDB 2.x through its
# v1 query API. The image exports the bucket's id and configures the influx CLI first.
set -eu
influx v1 dbrp create \
  --org "$DOCKER_INFLUXDB_INIT_ORG" \
  --bucket-id "$DOCKER_INFLUXDB_INIT_BUCKET_ID" \
  --db "$DOCKER_INFLUXDB_INIT_BUCKET" \
  --rp autogen \
  --default
