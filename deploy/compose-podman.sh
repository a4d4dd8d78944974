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

# `up` starts the services one by one, in the order of their `depends_on`, and enforces the
# conditions itself: podman 4.3 (Debian 12) cannot wait for `healthy`, so podman-compose skips
# that condition, and it fails to start a container whose `--requires` chain has an exited
# container in it (the demo job).  tests/test_deploy.py checks this order against the file.
START_ORDER="redis demo-job service"

container_of() {  # $1 service: the name of its container in this project
    podman ps -a --format '{{.Names}}' \
        --filter "label=io.podman.compose.project=${COMPOSE_PROJECT_NAME:-sku-recognition}" \
        --filter "label=com.docker.compose.service=$1"
}

start_in_order() {
    local service name rc tries
    for service in $START_ORDER; do
        compose up -d --no-deps "$@" "$service"
        name=$(container_of "$service")
        case "$service" in
            redis)  # condition: service_healthy
                tries=0
                until podman healthcheck run "$name" >/dev/null 2>&1; do
                    tries=$((tries + 1))
                    [ "$tries" -lt 60 ] || { echo "compose-podman: $name never got healthy" >&2; exit 1; }
                    sleep 1
                done
                ;;
            demo-job)  # condition: service_completed_successfully
                echo "compose-podman: waiting for $name (demo catalog, training, index)" >&2
                rc=$(podman wait "$name")
                if [ "$rc" != 0 ]; then
                    podman logs --tail 50 "$name" >&2
                    echo "compose-podman: $name exited $rc" >&2
                    exit 1
                fi
                ;;
        esac
    done
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
        [ "$command" = build ] || { shift; start_in_order "$@"; }
        ;;
    "")
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
    *)
        # Compose needs a value for the required key even where the command does not use it.
        # --profile tools: `run index-builder` as with Docker, where naming a service enables it.
        SKU_API_KEY=${SKU_API_KEY:-unused-by-$command} compose --profile tools "$@"
        ;;
esac
