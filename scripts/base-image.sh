#!/usr/bin/env bash
# Make the local base image of the training and serving images, without an image registry:
#   debootstrap (Debian bookworm, minbase, + python3 3.11, venv, pip, CA certificates) | podman import
# Usage: scripts/base-image.sh [IMAGE]        (default localhost/stackwise-base:bookworm)
# Cached twice: nothing runs when the image exists; the root filesystem tarball is kept under
# $STACKWISE_IMAGE_CACHE (default ~/.cache/stackwise/images), so a fresh podman storage on the same
# machine only re-imports it (seconds). Needs root (debootstrap), podman (or docker) and debootstrap
# (`apt-get install -y podman runc debootstrap`). Environment:
#   STACKWISE_CONTAINER_ENGINE podman (default) or docker
#   STACKWISE_DEBIAN_MIRROR   the Debian mirror (default: the first non-security one in apt's sources)
#   CONTAINERS_CONF           podman configuration (default: scripts/containers.conf beside this script)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
IMAGE="${1:-localhost/stackwise-base:bookworm}"
SUITE=bookworm
CACHE="${STACKWISE_IMAGE_CACHE:-$HOME/.cache/stackwise/images}"
TARBALL="$CACHE/debian-$SUITE-minbase-python3.tar"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
ENGINE="${STACKWISE_CONTAINER_ENGINE:-podman}"
PATH_VALUE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

image_exists() { "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; }
if image_exists; then
  echo "base image $IMAGE exists (cached)"
  exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.base-image.lock"
flock 9   # one builder at a time; a second caller waits, then finds the image or the tarball
if image_exists; then
  echo "base image $IMAGE exists (cached)"
  exit 0
fi

mirror() {
  if [ -n "${STACKWISE_DEBIAN_MIRROR:-}" ]; then echo "$STACKWISE_DEBIAN_MIRROR"; return; fi
  local uri
  # one-line format: deb [options] URI SUITE COMPONENTS...
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
         | sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}')"
  # deb822 format: URIs: ...
  [ -n "$uri" ] || uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | awk '$1 == "URIs:" {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}')"
  echo "${uri:-http://deb.debian.org/debian}"
}

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install -y debootstrap)" >&2; exit 1; }
  MIRROR="$(mirror)"
  ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/stackwise-rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS" "$TARBALL.tmp"' EXIT
  echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Smaller image: no downloaded packages or package lists (apt-get update restores the lists).
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
  tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
echo "$ENGINE import $TARBALL -> $IMAGE"
# An imported root filesystem has no image config at all: give it PATH, a locale and a command.
"$ENGINE" import \
  --change "ENV PATH=$PATH_VALUE" \
  --change "ENV LANG=C.UTF-8" \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $SUITE + python3 (stackwise scripts/base-image.sh)" \
  "$TARBALL" "$IMAGE" >/dev/null
"$ENGINE" image ls "$IMAGE"
