#!/usr/bin/env bash
# Container images for the pod test (tests/relay_pod.rs), built with podman without any
# registry, and the environment podman runs in on these machines (DESIGN.md §7).
#
# Usage:
#   scripts/test-images.sh check             exit 0 if podman can run containers here, else 3
#                                            (and say why)
#   scripts/test-images.sh build [BINARY]    build (or reuse) the images from BINARY, a mailtls
#                                            built on this Debian 12 host (default
#                                            target/debug/mailtls); installs podman and
#                                            debootstrap with apt when missing
#   scripts/test-images.sh run [--netns NAME] -- CMD [ARGS...]
#                                            run CMD where podman works: a private mount
#                                            namespace without the empty cgroup v2 mount of a
#                                            hybrid host, CONTAINERS_CONF set; with --netns
#                                            inside that network namespace (and with its
#                                            /etc/netns/NAME/resolv.conf, like `ip netns exec`)
#   scripts/test-images.sh podman ARGS...    run -- podman ARGS...
#   scripts/test-images.sh images            print the image names (relay, operator)
#   scripts/test-images.sh clean             remove the images, the base included
#
# Images (in podman's own storage, so they survive fresh clones on the same machine):
#   localhost/mailtls-test-base:bookworm-1   debootstrap --variant=minbase bookworm, imported
#                                            once (about a minute, needs deb.debian.org)
#   localhost/mailtls-relay:test             deploy/docker/relay.local.Dockerfile
#   localhost/mailtls-operator:test          deploy/docker/operator.local.Dockerfile
# podman's layer cache keeps the Postfix install; an unchanged binary reuses everything, a
# new one only replaces the copied binary (the image it replaces is removed).
#
# Environment:
#   MAILTLS_DEBIAN_MIRROR   debootstrap mirror (default http://deb.debian.org/debian)
#
# Exit codes: 0 success; 1 failure; 2 usage error; 3 podman cannot run here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF="$ROOT/scripts/test-images.sh"
CONF="$ROOT/scripts/test-containers.conf"
MIRROR=${MAILTLS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump the suffix when the base recipe below changes.
BASE=localhost/mailtls-test-base:bookworm-1
RELAY=localhost/mailtls-relay:test
OPERATOR=localhost/mailtls-operator:test

EXIT_CANNOT=3
PROG=test-images.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    local code=$1
    shift
    log "error: $*"
    exit "$code"
}

# ---- the podman environment ----------------------------------------------------------------

# run_inside NETNS CMD...: already in the private mount namespace.
run_inside() {
    local netns=$1
    shift
    # Hybrid cgroups (v1 controllers plus an empty v2 mount): crun picks the v2 mount and
    # fails on it. Only this namespace loses it.
    if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
        umount /sys/fs/cgroup/unified
    fi
    export CONTAINERS_CONF="$CONF"
    if [ -n "$netns" ]; then
        if [ -f "/etc/netns/$netns/resolv.conf" ]; then
            mount --bind "/etc/netns/$netns/resolv.conf" /etc/resolv.conf
        fi
        # Only the network namespace: `ip netns exec` would also remount /sys, which hides
        # the cgroup mounts podman needs.
        exec nsenter --net="/run/netns/$netns" -- "$@"
    fi
    exec "$@"
}

cmd_run() {
    local netns=""
    while [ $# -gt 0 ]; do
        case $1 in
            --netns) netns=${2:?--netns needs a name}; shift 2 ;;
            --) shift; break ;;
            *) die 2 "run: unexpected $1 (run [--netns NAME] -- CMD...)" ;;
        esac
    done
    [ $# -gt 0 ] || die 2 "run: no command"
    exec unshare -m --propagation private -- "$SELF" __inside "$netns" "$@"
}

podman_() { "$SELF" run -- podman "$@"; }

# ---- checks and packages -------------------------------------------------------------------

# why_not: print why podman cannot run here (nothing when it can).
why_not() {
    local out
    if [ "$(id -u)" -ne 0 ]; then
        echo "needs root (podman with host networking inside the test's network namespace)"
    elif ! command -v podman >/dev/null; then
        echo "podman is not installed (scripts/install-test-deps.sh installs it)"
    elif ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then
        echo "unshare and nsenter (util-linux) are missing"
    elif ! out=$(podman_ info --format '{{.Host.OCIRuntime.Name}}' 2>&1); then
        echo "podman info failed: $out"
    elif ! podman_ image exists "$BASE" && ! command -v debootstrap >/dev/null; then
        echo "no base image $BASE and no debootstrap to make it (scripts/install-test-deps.sh installs it)"
    fi
}

cmd_check() {
    local reason
    reason=$(why_not)
    if [ -n "$reason" ]; then
        echo "podman cannot run here: $reason"
        exit $EXIT_CANNOT
    fi
    echo "ok: $(podman --version)"
}

# ensure_packages COMMAND...: apt-get install the packages of these names when missing.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        command -v "$p" >/dev/null || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die $EXIT_CANNOT "needs root to install and run ${missing[*]}"
    command -v apt-get >/dev/null || die $EXIT_CANNOT "${missing[*]} missing and no apt-get"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---- images --------------------------------------------------------------------------------

build_base() {
    if podman_ image exists "$BASE"; then
        return 0
    fi
    local dir start=$SECONDS
    dir=$(mktemp -d "${TMPDIR:-/var/tmp}/mailtls-base.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" EXIT
    log "making $BASE with debootstrap from $MIRROR (about a minute)"
    if ! debootstrap --variant=minbase bookworm "$dir/root" "$MIRROR" >"$dir/log" 2>&1; then
        tail -n 20 "$dir/log" >&2
        die $EXIT_CANNOT "debootstrap from $MIRROR failed (see above)"
    fi
    # What debian:bookworm-slim has: updates and security fixes too.
    cat >"$dir/root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
    rm -rf "$dir"/root/var/cache/apt/archives/*.deb "$dir"/root/var/lib/apt/lists/*
    tar -C "$dir/root" -c . | podman_ import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >"$dir/log" 2>&1 \
        || { tail -n 20 "$dir/log" >&2; die 1 "podman import of $BASE failed (see above)"; }
    rm -rf "$dir"
    trap - EXIT
    log "$BASE made in $((SECONDS - start))s"
}

# build_image NAME DOCKERFILE CONTEXT
build_image() {
    local name=$1 dockerfile=$2 context=$3 old new log
    old=$(podman_ image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
    log=$(mktemp)
    if ! podman_ build --network host --build-arg "BASE=$BASE" -f "$dockerfile" -t "$name" \
        "$context" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die 1 "podman build of $name failed (see above)"
    fi
    rm -f "$log"
    new=$(podman_ image inspect --format '{{.Id}}' "$name")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        # The image this one replaces (an older binary); its cached Postfix layer stays.
        podman_ rmi "$old" >/dev/null 2>&1 || true
    fi
    log "$name ${new:0:12}"
}

cmd_build() {
    local binary=${1:-$ROOT/target/debug/mailtls}
    [ -x "$binary" ] || die 1 "no binary at $binary (cargo build first)"
    ensure_packages podman
    podman_ image exists "$BASE" 2>/dev/null || ensure_packages debootstrap
    local reason
    reason=$(why_not)
    [ -z "$reason" ] || die $EXIT_CANNOT "podman cannot run here: $reason"
    local start=$SECONDS context
    build_base
    context=$(mktemp -d "${TMPDIR:-/var/tmp}/mailtls-images.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$context'" EXIT
    # Debug information is most of a debug build (280 MB -> 60 MB); symbols stay for
    # backtraces.
    objcopy --strip-debug "$binary" "$context/mailtls" 2>/dev/null || cp "$binary" "$context/mailtls"
    build_image "$RELAY" "$ROOT/deploy/docker/relay.local.Dockerfile" "$context"
    build_image "$OPERATOR" "$ROOT/deploy/docker/operator.local.Dockerfile" "$context"
    rm -rf "$context"
    trap - EXIT
    log "images ready in $((SECONDS - start))s"
}

cmd_clean() {
    local image
    for image in "$RELAY" "$OPERATOR" "$BASE"; do
        podman_ rmi "$image" 2>/dev/null || true
    done
}

case ${1:-} in
    check) cmd_check ;;
    build) shift; cmd_build "$@" ;;
    run) shift; cmd_run "$@" ;;
    podman) shift; cmd_run -- podman "$@" ;;
    images) echo "$RELAY"; echo "$OPERATOR" ;;
    clean) cmd_clean ;;
    __inside) shift; run_inside "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
