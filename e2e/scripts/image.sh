#!/usr/bin/env bash
# `make image`: the operator's container image, built here without a Docker engine.
#
#   1. the static musl binary, compiled on the host: cargo build --profile dist --locked
#      --target x86_64-unknown-linux-musl (needs `rustup target add x86_64-unknown-linux-musl` and
#      musl-gcc, Debian's musl-tools), checked to be static, its symbols stripped;
#   2. the Dockerfile's image around it (--build-arg BINARY=prebuilt: the same last stage that
#      `docker build .` produces, with this binary), built by $CONTAINER_TOOL:
#        buildah (default): --storage-driver vfs --isolation chroot, in a private store under
#                           the cache (nothing of the system's container storage is touched)
#        podman, docker:    their own build and store
#      with timestamps at 0 (the same binary gives the same image digest);
#   3. saved as an OCI archive ($IMAGE_ARCHIVE, image name $IMG inside) and checked by
#      e2e/scripts/check_image.py: one layer holding only /pss-operator (root-owned, 0755,
#      static), the user, entrypoint, command and port of the Dockerfile's last stage.
# Prints the archive's path on the last line of stdout.
#
# Environment: IMG (default pss-operator:latest), CONTAINER_TOOL, IMAGE_ARCHIVE, CARGO_TARGET_DIR,
# PSS_CACHE_DIR; IMAGE_BINARY=path skips step 1 and packs that binary instead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMG=${IMG:-pss-operator:latest}
CONTAINER_TOOL=${CONTAINER_TOOL:-buildah}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
IMAGE_ARCHIVE=${IMAGE_ARCHIVE:-$TARGET_DIR/image/pss-operator.oci.tar}
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}
BUILDAH_STORE=${BUILDAH_STORE:-$CACHE_ROOT/containers}
MUSL=x86_64-unknown-linux-musl

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- what the system must provide, checked first --------------------------------------------
missing=()
if [[ -z "${IMAGE_BINARY:-}" ]]; then
  command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
  if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
    missing+=("the Rust target $MUSL: rustup target add $MUSL")
  fi
  command -v musl-gcc >/dev/null || missing+=("musl-gcc: apt-get install musl-tools")
fi
command -v readelf >/dev/null && command -v strip >/dev/null || missing+=("readelf, strip: apt-get install binutils")
command -v python3 >/dev/null || missing+=("python3")
case "$CONTAINER_TOOL" in
  buildah) command -v buildah >/dev/null || missing+=("buildah: apt-get install buildah (or CONTAINER_TOOL=podman|docker)") ;;
  podman) command -v podman >/dev/null || missing+=("podman: apt-get install podman") ;;
  docker) command -v docker >/dev/null || missing+=("docker") ;;
  *) die "CONTAINER_TOOL must be buildah, podman or docker, not $CONTAINER_TOOL" ;;
esac
if ((${#missing[@]})); then
  for m in "${missing[@]}"; do log "missing: $m"; done
  exit 1
fi

# ---- 1. the binary ----------------------------------------------------------------------------
if [[ -n "${IMAGE_BINARY:-}" ]]; then
  bin=$IMAGE_BINARY
else
  log "cargo build --profile dist --locked --target $MUSL --bin pss-operator"
  export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
  (cd "$ROOT" && cargo build --profile dist --locked --target "$MUSL" --bin pss-operator >&2)
  bin=$TARGET_DIR/$MUSL/dist/pss-operator
fi
[[ -x "$bin" ]] || die "$bin is not an executable"
if readelf -lW "$bin" | grep -q 'Requesting program interpreter' || readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
  die "$bin is dynamically linked; the image holds nothing else, it must be static"
fi

# ---- 2. the image -----------------------------------------------------------------------------
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# Symbols stripped, as the Dockerfile's compile stage does (19 -> 15 MB); panics still name files and lines.
strip -o "$ctx/pss-operator.tmp" "$bin"
install -m 0755 "$ctx/pss-operator.tmp" "$ctx/pss-operator"
rm "$ctx/pss-operator.tmp"
mkdir -p "$(dirname "$IMAGE_ARCHIVE")"
rm -f "$IMAGE_ARCHIVE"
build_args=(--build-arg BINARY=prebuilt -f "$ROOT/Dockerfile" -t "$IMG")
log "building $IMG with $CONTAINER_TOOL from $ROOT/Dockerfile (BINARY=prebuilt)"
case "$CONTAINER_TOOL" in
  buildah)
    store=(--storage-driver vfs --root "$BUILDAH_STORE/storage" --runroot "$BUILDAH_STORE/run")
    buildah "${store[@]}" bud --isolation chroot --timestamp 0 --identity-label=false --layers=false \
      "${build_args[@]}" "$ctx" >&2
    buildah "${store[@]}" push "$IMG" "oci-archive:$IMAGE_ARCHIVE:$IMG" >&2
    # The store keeps only the last build of each name.
    buildah "${store[@]}" rmi --prune >/dev/null 2>&1 || true
    ;;
  podman)
    podman build --timestamp 0 --identity-label=false "${build_args[@]}" "$ctx" >&2
    podman save --format oci-archive -o "$IMAGE_ARCHIVE" "$IMG" >&2
    ;;
  docker)
    docker build "${build_args[@]}" "$ctx" >&2
    docker save -o "$IMAGE_ARCHIVE" "$IMG" >&2
    ;;
esac

# ---- 3. what it holds -------------------------------------------------------------------------
python3 "$ROOT/e2e/scripts/check_image.py" --dockerfile "$ROOT/Dockerfile" --binary "$ctx/pss-operator" "$IMAGE_ARCHIVE" >&2
echo "$IMAGE_ARCHIVE"
