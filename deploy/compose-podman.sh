#!/usr/bin/env bash
# docker-compose.yml on podman, without a registry or a Docker engine (our machines and CI).
#
#   deploy/compose-podman.sh up        # base images from Debian packages, both images, then
#                                      # `podman-compose up -d` (returns once the demo job is done)
#   deploy/compose-podman.sh build     # only the images (`up --no-build`: only the start)
#   deploy/compose-podman.sh run --rm index-builder list        # any other podman-compose command
#   deploy/compose-podman.sh down -v
#
# What it sets (each can be overridden from the environment):
# * CONTAINERS_CONF: deploy/podman/containers.conf (runc, cgroupfs, no default ulimits);
# * SKU_BASE_IMAGE / SKU_REDIS_IMAGE: the images deploy/local-images.sh makes with debootstrap;
# * SKU_TORCH_INDEX_URL="": torch comes from pip's configured index, like every other package;
# * the host's pip settings and CA bundle reach the builds as read-only volumes
#   (deploy/podman/host_build_settings.py), never an image layer;
# * SKU_API_KEY: `up` makes one when unset and prints it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/deploy/podman/containers.conf}
export SKU_BASE_IMAGE=${SKU_BASE_IMAGE:-localhost/sku-python:3.11-bookworm}
export SKU_REDIS_IMAGE=${SKU_REDIS_IMAGE:-localhost/sku-redis:7-bookworm}
export SKU_TORCH_INDEX_URL=${SKU_TORCH_INDEX_URL-}
PODMAN_COMPOSE=${PODMAN_COMPOSE:-$(command -v podman-compose || echo "$REPO/.venv/bin/podman-compose")}
# Builds run nice'd: they share the machine's cores with whoever else works on it.
NICE=${SKU_BUILD_NICE:-19}

compose() { "$PODMAN_COMPOSE" -f "$REPO/docker-compose.yml" "$@"; }

build() {
    nice -n "$NICE" "$REPO/deploy/local-images.sh"
    local settings
    settings=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: remove this very folder
    trap "rm -rf '$settings'" RETURN
    local volumes
    volumes=$(python3 "$REPO/deploy/podman/host_build_settings.py" "$settings" | tr '\n' ' ')
    # The build stages reach the package index over the host's network, as pip on the host does.
    nice -n "$NICE" "$PODMAN_COMPOSE" -f "$REPO/docker-compose.yml" \
        "--podman-build-args=--network=host $volumes" build
}

command=${1:-}
case "$command" in
    up|build)
        if [ -z "${SKU_API_KEY:-}" ]; then
            SKU_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
            export SKU_API_KEY
            [ "$command" = build ] || echo "compose-podman: SKU_API_KEY=$SKU_API_KEY" >&2
        fi
        # `up --no-build`: the images exist already (podman-compose takes the flag too).
        case " $* " in *" --no-build "*) ;; *) build;; esac
        [ "$command" = build ] || { shift; compose up -d "$@"; }
        ;;
    "")
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
    *)
        # Compose needs a value for the required key even where the command does not use it.
        SKU_API_KEY=${SKU_API_KEY:-unused-by-$command} compose "$@"
        ;;
esac
