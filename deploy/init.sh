#!/bin/sh
# The stack's one-shot init (the `init` service of docker-compose.yml). It runs at every
# `docker compose up` and exits 0 once the collector and the probes have what they need:
#
# 1. TLS for the collector: `popwatch-collector certs init` makes a private CA (its key
#    in CA_DIR, a volume only this service mounts) and a server certificate for the
#    names in COLLECTOR_NAMES, into CERTS_DIR. Both are kept while they are current.
#    The CA certificate is copied to TOKENS_DIR/ca.crt, where the probes pin it.
# 2. Each probe given as an argument, ID:REGION[:COUNTRY], gets a token in TOKENS_DIR/ID.
#    A token is kept while the registry accepts it for that probe and region. When the
#    token file is gone (its volume was removed), or the registry no longer takes it
#    (the collector's volume was removed, or the region changed), the probe is revoked
#    and added again, and the new token replaces the old one: no state of the volumes
#    makes this service fail at every start.
#
#   sh deploy/init.sh probe-eu:eu-west:DE probe-us:us-east:US
set -eu

certs=${CERTS_DIR:-/run/popwatch/certs}
ca_dir=${CA_DIR:-/var/lib/popwatch-ca}
tokens=${TOKENS_DIR:-/run/popwatch/tokens}
data=${POPWATCH_DATA_DIR:-/var/lib/popwatch}
umask 077

# -- 1. the collector's certificate, and the CA for the probes
probes="$*"  # ID:REGION[:COUNTRY] each; none of them has a space
set --
for name in ${COLLECTOR_NAMES:-collector localhost}; do
  set -- "$@" --name "$name"
done
popwatch-collector certs init --dir "$certs" --ca-dir "$ca_dir" "$@"
mkdir -p "$tokens"
cp "$certs/ca.crt" "$tokens/ca.crt.new"
chmod 644 "$tokens/ca.crt.new"
mv "$tokens/ca.crt.new" "$tokens/ca.crt"

# -- 2. a working token for each probe
accepted() {  # the registry takes the token in file $3 for probe $1 in region $2
  [ -s "$3" ] || return 1
  python3 - "$data/registry.sqlite" "$1" "$2" "$3" <<'EOF'
import sys
from pathlib import Path

from collector.ingest.registry import Registry, RegistryError

path, probe, region, token_file = sys.argv[1:]
try:
    registry = Registry(Path(path), create=False)
except RegistryError:
    sys.exit(1)
who = registry.authenticate(Path(token_file).read_text().strip())
registry.close()
sys.exit(0 if who is not None and (who.probe, who.region) == (probe, region) else 1)
EOF
}

for spec in $probes; do
  id=${spec%%:*}
  rest=${spec#*:}
  region=${rest%%:*}
  country=""
  [ "$rest" != "$region" ] && country=${rest#*:}
  file=$tokens/$id
  if accepted "$id" "$region" "$file"; then
    echo "init: probe $id ($region) keeps its token" >&2
    continue
  fi
  # a lost token, or a registry that lost the probe: issue a new one (revoking the old
  # one if the registry still has it)
  popwatch-collector probes revoke "$id" --data-dir "$data" >/dev/null 2>&1 || true
  popwatch-collector probes add "$id" --region "$region" ${country:+--country "$country"} \
    --data-dir "$data" >"$file.new"
  chmod 600 "$file.new"
  mv "$file.new" "$file"
  echo "init: probe $id ($region) has a new token in $file" >&2
done
