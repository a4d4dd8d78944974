#!/usr/bin/env bash
# Air-gapped base images for the compose demo, made from Debian packages: no registry needed.
#
#   sudo deploy/local-images.sh            # or: make images-offline
#
# Builds, with debootstrap, and imports into podman (or docker: CONTAINER_ENGINE=docker):
#   $SKU_BASE_IMAGE   (localhost/sku-python:3.11-bookworm)  bookworm minbase + python3, venv, CA certs:
#                     the Dockerfiles' BASE_IMAGE in place of python:3.11-slim-bookworm
#   $SKU_REDIS_IMAGE  (localhost/sku-redis:7-bookworm)      bookworm minbase + redis-server (7.0):
#                     compose's redis image in place of redis:7-alpine
# Idempotent: an image whose `sku-recognition.recipe` label matches this recipe (suite, mirror,
# packages) is kept as it is; downloaded .debs stay in $SKU_DEBOOTSTRAP_CACHE for the next run.
# The mirror is the host's own (its apt sources), else deb.debian.org; DEBIAN_MIRROR overrides.
# Needs root (debootstrap chroots) and the debootstrap package.
set -euo pipefail

ENGINE=${CONTAINER_ENGINE:-podman}
SUITE=${DEBIAN_SUITE:-bookworm}
BASE_IMAGE=${SKU_BASE_IMAGE:-localhost/sku-python:3.11-bookworm}
REDIS_IMAGE=${SKU_REDIS_IMAGE:-localhost/sku-redis:7-bookworm}
CACHE=${SKU_DEBOOTSTRAP_CACHE:-/var/cache/sku-recognition/debootstrap}
RECIPE_VERSION=1  # bump when what goes into a root file system changes below
# python-is-python3: the Dockerfiles and the service's HEALTHCHECK call `python`, as in the
# official image.
PY_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
REDIS_PACKAGES=redis-server

log() { echo "local-images: $*" >&2; }

host_mirror() {
    # The first Debian archive URI of the host's apt sources (deb822 or one-line format).
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
        case "$uri" in */debian) echo "$uri"; return;; esac
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' "$f")
        [ -n "$uri" ] && { echo "${uri%/}"; return; }
    done
    echo "http://deb.debian.org/debian"
}

MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}

recipe_key() {  # what makes an image: change any of it and the image is rebuilt
    printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$1" "$2" | sha256sum | cut -c1-16
}

image_is_current() {  # $1 image, $2 recipe key
    local have
    have=$("$ENGINE" image inspect --format '{{ index .Config.Labels "sku-recognition.recipe" }}' \
           "$1" 2>/dev/null) || return 1
    [ "$have" = "$2" ]
}

# $1 image, $2 packages, $3 a function that finishes the root file system (given its path; its
# body is part of the recipe), then `--change`s for the image config.
build_image() {
    local image=$1 packages=$2 setup=$3
    shift 3
    local key rootfs
    key=$(recipe_key "$packages" "$(declare -f "$setup")")
    if image_is_current "$image" "$key"; then
        log "$image is up to date (recipe $key)"
        return
    fi
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d /var/tmp/sku-rootfs.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
    trap "rm -rf '$rootfs'" EXIT
    log "debootstrap $SUITE ($packages) from $MIRROR"
    debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE" \
        "$SUITE" "$rootfs" "$MIRROR" >&2
    "$setup" "$rootfs"
    # The package lists and archives are a build's business (apt-get update), not the image's.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    log "importing $image"
    tar -C "$rootfs" --numeric-owner -c . | "$ENGINE" import --quiet \
        --change "LABEL sku-recognition.recipe=$key" \
        --change "LABEL org.opencontainers.image.description=Debian $SUITE minbase + $packages (debootstrap)" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        "$@" - "$image" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

python_rootfs() { :; }
build_image "$BASE_IMAGE" "$PY_PACKAGES" python_rootfs --change 'CMD ["python3"]'

# Like the official image's entrypoint: without a config file, Redis would refuse the other
# containers' connections (protected mode, no password), so `redis-server ...` (compose's command)
# gets `--protected-mode no`; the compose network is the boundary.
redis_rootfs() {
    cat > "$1/usr/local/bin/redis-entrypoint" <<'SH'
#!/bin/sh
set -e
case "$1" in -*) set -- redis-server "$@";; esac
if [ "$1" = redis-server ]; then set -- "$@" --protected-mode no; fi
exec "$@"
SH
    chmod 755 "$1/usr/local/bin/redis-entrypoint"
}
build_image "$REDIS_IMAGE" "$REDIS_PACKAGES" redis_rootfs \
    --change 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]' --change 'CMD ["redis-server"]' \
    --change 'USER redis' --change 'WORKDIR /var/lib/redis' --change 'EXPOSE 6379'
log "ready: $BASE_IMAGE, $REDIS_IMAGE"
