#!/usr/bin/env bash
# Build a local base image for the Dockerfile where no registry image can be pulled:
# Debian bookworm (minbase) with Python 3.11 and its venv module, from the Debian mirror
# apt on this machine already uses, imported into podman (or docker) as TAG.
#
#   sudo deploy/base-image.sh [TAG]          # default popwatch-base:bookworm
#   podman build --build-arg BASE=popwatch-base:bookworm -t popwatch .
set -euo pipefail
tag=${1:-popwatch-base:bookworm}
engine=$(command -v podman || command -v docker)
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [[ -z "$mirror" ]]; then
  mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[[ -n "$mirror" ]] || { echo "base-image.sh: no Debian mirror found in /etc/apt" >&2; exit 2; }
root=$(mktemp -d /var/tmp/popwatch-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "== debootstrap bookworm into $root" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
echo "== import as $tag" >&2
tar -C "$root" -c . | "$engine" import - "$tag" >/dev/null
echo "$tag"
