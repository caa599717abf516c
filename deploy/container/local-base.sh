#!/bin/sh
# A local Debian bookworm base image with python3, for building the Dockerfile where no
# registry image can be pulled (`make image-test`): mmdebstrap builds it from Debian's
# packages, `podman import` makes it an image.
#
#   deploy/container/local-base.sh [IMAGE]      (default localhost/webhook-worker-base:bookworm)
#
# The tarball is cached in .cache/image/ (git-ignored): only the first run downloads
# (~2 min on a busy 2-core machine); later runs find the image in podman's store, or
# import the tarball again (seconds) when the image was removed.
# The base gets this machine's CA bundle, so pip inside the build trusts what the host
# trusts (a TLS-inspecting egress proxy included). Delete .cache/image/ to rebuild.
set -eu
image=${1:-localhost/webhook-worker-base:bookworm}
cache=${IMAGE_CACHE_DIR:-.cache/image}
# Like the official slim images: no documentation, manual pages or translations.
set -- --variant=minbase --format=tar \
  --include=python3,python3-venv,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs' \
  bookworm
# The tarball's name carries a digest of these options: change them and it is rebuilt.
key=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
tarball="$cache/debian-bookworm-python3-$key.tar"
podman() { command podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

# Already imported from these options (a fresh clone on the same machine finds it too)?
if [ "$(podman image inspect --format '{{index .Labels "base-options"}}' "$image" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  echo "building the Debian bookworm base with mmdebstrap (cached in $tarball)" >&2
  rm -f "$cache"/debian-bookworm-python3-*.tar "$cache"/*.part
  mmdebstrap --quiet "$@" "$tarball.part"
  mv "$tarball.part" "$tarball"
fi
podman import --quiet --change "LABEL base-options=$key" \
  "$tarball" "$image" >/dev/null
