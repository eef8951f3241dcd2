#!/usr/bin/env bash
# The enclave image's binary is reproducible: built twice, from two copies of the source in different
# directories, with the flags the image's Dockerfile uses (--locked, paths remapped, stripped release),
# it comes out byte for byte the same, and no path of the build machine is left in it.
#
# Both builds share one target directory, so dependencies compile once; only the workspace's own crates
# (whose paths differ) build twice. Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$ROOT/target/repro
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
rm -rf "$WORK/a" "$WORK/b"
mkdir -p "$WORK/a/src" "$WORK/b/elsewhere/src"
A=$WORK/a/src
B=$WORK/b/elsewhere/src
# The committed sources (and the working tree's edits to them), nothing built.
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tee >(tar -xf - -C "$A") | tar -xf - -C "$B"
sync
# One flag set for both builds (so dependencies are shared): each copy's path, the registry and the
# target directory map to fixed names, as /build, /usr/local/cargo and /wheels do in the Dockerfile.
export RUSTFLAGS="--remap-path-prefix=$A=/confidant --remap-path-prefix=$B=/confidant --remap-path-prefix=$CARGO_HOME=/cargo --remap-path-prefix=$WORK/target=/target --remap-path-prefix=$LIBTORCH=/libtorch"
# The same for C++ compiled by build scripts (tch's wrapper: its assertions carry libtorch's header paths).
export CXXFLAGS="-ffile-prefix-map=$LIBTORCH=/libtorch -ffile-prefix-map=$CARGO_HOME=/cargo"
export CFLAGS="$CXXFLAGS"
export CARGO_TARGET_DIR=$WORK/target CARGO_INCREMENTAL=0 SOURCE_DATE_EPOCH=0
for d in "$A" "$B"; do
  (cd "$d" && cargo build -q --release --locked --no-default-features -p confidant-enclave)
  cp "$CARGO_TARGET_DIR/release/confidant-enclave" "$d/../confidant-enclave"
done
a=$(sha256sum < "$A/../confidant-enclave" | cut -d' ' -f1)
b=$(sha256sum < "$B/../confidant-enclave" | cut -d' ' -f1)
echo "enclave binary built in $A: $a"
echo "enclave binary built in $B: $b"
[ "$a" = "$b" ] || { echo "error: the two builds differ"; exit 1; }
for p in "$ROOT" "$A" "$B" "$CARGO_HOME" "$HOME" "$LIBTORCH"; do
  if grep -q -F -- "$p" "$A/../confidant-enclave"; then
    echo "error: the binary holds a path of this machine: $p"; exit 1
  fi
done
echo "reproducible: the same bytes from both directories, no build-machine paths ($(stat -c %s "$A/../confidant-enclave") bytes)"
rm -rf "$A" "$B"
