#!/usr/bin/env bash
# The parent instance's bundle: the relay binary, the systemd units and their scripts, the deploy docs.
# Output: target/confidant-parent.tar.gz (upload beside confidant.eif; deploy/aws/fleet.yaml fetches both).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p confidant-relay
D=target/parent-bundle
rm -rf "$D" && mkdir -p "$D/bin" "$D/deploy" "$D/enclave/image" "$D/docs"
cp target/release/confidant-relay "$D/bin/"
cp -r deploy/systemd deploy/install-parent.sh "$D/deploy/"
cp enclave/image/parent-credentials.sh "$D/enclave/image/"
cp docs/deploy.md "$D/docs/"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$D" -czf target/confidant-parent.tar.gz .
echo "target/confidant-parent.tar.gz ($(stat -c %s target/confidant-parent.tar.gz) bytes)"
