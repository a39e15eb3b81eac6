#!/usr/bin/env bash
# Assembles a root filesystem for the ConcordKV image from binaries that are
# already built: the binaries, every shared library `ldd` lists for them
# (with the dynamic loader) and the example configs. No base image needed.
#
#   ops/docker/build-rootfs.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds concord-pd, pd-ctl, concord-store, concord-router, concord
# (e.g. target/release). OUT_DIR/rootfs is created (replaced if present).
set -euo pipefail
BIN_DIR=${1:?usage: build-rootfs.sh BIN_DIR OUT_DIR}
OUT_DIR=${2:?usage: build-rootfs.sh BIN_DIR OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
BINARIES="concord-pd pd-ctl concord-store concord-router concord"

ROOT="$OUT_DIR/rootfs"
rm -rf "$ROOT"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc/concord" "$ROOT/data" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"

copy_lib() {
  local lib=$1
  [ -e "$ROOT$lib" ] && return 0
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
}

for b in $BINARIES; do
  src="$BIN_DIR/$b"
  if [ ! -x "$src" ]; then
    echo "error: $src is missing; build it first (cargo build --workspace --bins)" >&2
    exit 1
  fi
  cp "$src" "$ROOT/usr/local/bin/$b"
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$ROOT/usr/local/bin/$b" 2>/dev/null || true
  fi
  # "libx.so => /path/libx.so (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
  ldd "$src" | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}' |
    while read -r lib; do copy_lib "$lib"; done
done

cp "$HERE"/../config/*.toml "$ROOT/etc/concord/"
# Name resolution for glibc: hosts file first, then DNS (compose's resolver).
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
printf 'root:x:0:0:root:/data:/usr/local/bin/concord\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\n' > "$ROOT/etc/group"
echo "rootfs ready in $ROOT ($(du -sh "$ROOT" | cut -f1))"
