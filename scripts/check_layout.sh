#!/usr/bin/env bash
# The layout's promise, checked: only confidant-model (and what runs it) depends on libtorch. The
# client, the relay, the operator's tools, the server core and the test KMS gate have no torch-sys in
# their dependency tree, build without LIBTORCH, and their binaries load no libtorch library.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
fail=0
for pkg in confidant-client confidant-relay confidant-ops confidant-server confidant-kms-gate confidant-sealing confidant-kms confidant-nsm; do
  if $CARGO tree -p "$pkg" -e normal,build --prefix none | grep -q '^torch-sys '; then
    echo "error: $pkg depends on torch-sys"; fail=1
  fi
done
# Without libtorch in the environment at all.
env -u LIBTORCH -u LIBTORCH_CXX11_ABI -u LIBTORCH_USE_PYTORCH \
  $CARGO build -q -p confidant-client -p confidant-relay -p confidant-ops -p confidant-kms-gate
for bin in confidant confidant-relay confidant-ops confidant-kms-gate; do
  if readelf -d "target/debug/$bin" | grep -E 'NEEDED.*(torch|c10)'; then
    echo "error: $bin loads libtorch"; fail=1
  fi
done
# The enclave image's build leaves the emulated NSM out (and a local build has it: the check can fail).
nsm_features() { $CARGO tree -p confidant-enclave "$@" -f '{p} {f}' --depth 1 | grep 'confidant-nsm'; }
if ! nsm_features | grep -q emulated; then
  echo "error: cannot see the emulated NSM in the local build's features"; fail=1
fi
if nsm_features --no-default-features | grep -q emulated; then
  echo "error: the image build of confidant-enclave carries the emulated NSM"; fail=1
fi
[ "$fail" = 0 ] && echo "layout: only confidant-model links libtorch; the image build has no emulated NSM"
exit "$fail"
