#!/usr/bin/env bash
# Usage: tests/support/container.sh COMMAND...   (what `make container-test` and `make bench-container` call)
#
# Brings up a Docker engine (installs Debian's docker.io, mmdebstrap and docker-compose when missing, starts dockerd
# as root unless one already answers), builds the image from the Dockerfile as digitsum:latest, runs COMMAND with
# DIGITSUM_IMAGE set, and stops the dockerd it started by its PID however COMMAND ends.
#
# The base image is the Dockerfile's ARG BASE default (python:3.11-slim-bookworm pinned by digest). Where it cannot
# be pulled (our CI machines reach package registries but no image registry), a stand-in is built from Debian
# packages with mmdebstrap, imported as python:3.11-slim-bookworm, and the build is given --build-arg BASE with that
# tag: `docker import` cannot create a name@digest reference, so the digest pin is the one thing the stand-in skips.
# The machine's extra CA certificates (/usr/local/share/ca-certificates) go into the stand-in only, so that pip in
# the build trusts this network's TLS; they are never committed and never reach an image built from the real base.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=digitsum:latest
STATE=${DIGITSUM_DOCKER_STATE:-/tmp/digitsum-docker}
mkdir -p "$STATE"
log() { echo "container: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

install_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
}

DOCKERD_PID=
stop_engine() {
  [ -n "$DOCKERD_PID" ] || return 0
  log "stopping dockerd (pid $DOCKERD_PID)"
  kill "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
}

start_engine() {
  if docker info >/dev/null 2>&1; then
    log "using the Docker engine already running"
    return
  fi
  mkdir -p "$STATE"
  dockerd >"$STATE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  trap stop_engine EXIT
  trap 'exit 143' TERM INT  # so that the EXIT trap runs
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && { log "dockerd started (pid $DOCKERD_PID)"; return; }
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$STATE/dockerd.log" >&2
  die "dockerd did not start (its log: $STATE/dockerd.log)"
}

default_base() {
  sed -n 's/^ARG BASE=//p' Dockerfile | head -1
}

# Prints the --build-arg that the build needs (nothing when the pinned base is there or can be pulled).
base_image() {
  local base tag
  base=$(default_base)
  [ -n "$base" ] || die "Dockerfile has no 'ARG BASE=' default"
  if docker image inspect "$base" >/dev/null 2>&1 || timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    log "base image: $base (pulled)"
    return
  fi
  tag=${base%@*}
  if ! docker image inspect "$tag" >/dev/null 2>&1 \
    || [ "$(docker image inspect -f '{{index .Config.Labels "digitsum.standin"}}' "$tag")" != "1" ]; then
    build_standin "$tag"
  fi
  log "base image: $base cannot be pulled here; using a stand-in built from Debian packages as $tag (--build-arg BASE=$tag)"
  echo "--build-arg BASE=$tag"
}

# Debian bookworm's python3 (3.11, as in the real base) with a venv at /usr/local, so python and pip sit on PATH
# where the official image has them; the machine's extra CA certificates for pip's TLS.
build_standin() {
  local tag=$1 tar="$STATE/standin.tar"
  mkdir -p "$STATE"
  log "building the stand-in base with mmdebstrap (about 2 minutes)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
    bookworm "$tar" >&2
  docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL digitsum.standin=1' \
    --change 'CMD ["python3"]' \
    "$tar" "$tag" >/dev/null
  rm -f "$tar"
}

build_image() {
  local args started
  args=$(base_image)
  export DIGITSUM_BUILD_ARGS=$args  # for a rebuild by the command (benchmarks/container.py times one)
  started=$(date +%s)
  # shellcheck disable=SC2086  # args is zero or two words
  log "building $IMAGE (a few minutes the first time; log: $STATE/build.log)"
  DOCKER_BUILDKIT=0 docker build $args -t "$IMAGE" . >"$STATE/build.log" 2>&1 \
    || { tail -40 "$STATE/build.log" >&2; die "docker build failed"; }
  log "built $IMAGE in $(($(date +%s) - started)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}'))"
}

main() {
  [ $# -gt 0 ] || die "usage: $0 COMMAND..."
  [ "$(id -u)" -eq 0 ] || die "needs root (installs packages and starts dockerd)"
  install_tools
  start_engine
  build_image
  export DIGITSUM_IMAGE=$IMAGE
  "$@"
}

main "$@"  # in a function, so bash has read the whole file before running it
