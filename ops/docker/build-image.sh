#!/usr/bin/env bash
# Builds the ConcordKV container image from the workspace's binaries.
#
#   ops/docker/build-image.sh [--profile debug|release] [--tag NAME:TAG] [--no-cargo]
#
# Defaults: --profile release, --tag concordkv:latest. Runs
# `cargo build --workspace --bins` for the profile first unless --no-cargo.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PROFILE=release
TAG=concordkv:latest
CARGO=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=${2:?--profile needs a value}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --no-cargo) CARGO=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  debug) FLAG="" ;;
  release) FLAG="--release" ;;
  *) echo "error: --profile must be debug or release" >&2; exit 2 ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$CARGO" = 1 ]; then
  (cd "$ROOT" && cargo build $FLAG --workspace --bins)
fi
CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/concord-image.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
"$HERE/build-rootfs.sh" "$TARGET_DIR/$PROFILE" "$CONTEXT"
cp "$HERE/Dockerfile" "$CONTEXT/Dockerfile"
docker build -q -t "$TAG" "$CONTEXT"
echo "built image $TAG"
