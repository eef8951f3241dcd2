#!/usr/bin/env bash
# What can be checked here of the deployment (no AWS, no Docker engine, no nitro-cli): the CloudFormation
# template with cfn-lint, the parent's shell scripts with shellcheck, the systemd units with
# systemd-analyze (where systemd is installed), the image's Dockerfile for pinned bases and the
# build context, and the PCR script on a sample of nitro-cli's output. Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")

echo "== cfn-lint deploy/aws/fleet.yaml"
"$BIN/cfn-lint" deploy/aws/fleet.yaml

echo "== shellcheck"
"$BIN/shellcheck" deploy/install-parent.sh deploy/systemd/enclave-run.sh enclave/image/start.sh \
  enclave/image/parent-credentials.sh scripts/check_reproducible.sh scripts/package_parent.sh scripts/check_deploy.sh

echo "== systemd units"
if command -v systemd-analyze >/dev/null; then
  T=$(mktemp -d)
  trap 'rm -rf "$T"' EXIT
  # The binaries are installed on the parent, not here: the units are checked with /bin/true in their
  # place, beside stand-ins for the Nitro Enclaves services they order after.
  for u in deploy/systemd/*.service; do
    n=$(basename "$u"); n=${n/@./@0.}
    sed -E 's#^(Exec(Start|Stop)=)[^ ]+#\1/bin/true#' "$u" > "$T/$n"
  done
  for s in nitro-enclaves-allocator nitro-enclaves-vsock-proxy; do
    printf '[Service]\nExecStart=/bin/true\n' > "$T/$s.service"
  done
  SYSTEMD_UNIT_PATH="$T:" systemd-analyze verify "$T"/confidant-*.service
  echo "units verified"
else
  echo "systemd-analyze not installed: units not verified"
fi

echo "== enclave/image/Dockerfile"
D=enclave/image/Dockerfile
bad=$(grep -nE '^(FROM|ARG [A-Z_]*IMAGE=)' "$D" | grep -vE '@sha256:[0-9a-f]{64}|FROM \$\{RUST_IMAGE\}|FROM scratch' || true)
[ -z "$bad" ] || { echo "error: base image not pinned by digest: $bad"; exit 1; }
grep -q -- '--locked' "$D" || { echo "error: the image build is not --locked"; exit 1; }
grep -q -- '--remap-path-prefix' "$D" || { echo "error: build paths are not remapped"; exit 1; }
for p in target .venv demo; do
  grep -qx "$p" .dockerignore || { echo "error: .dockerignore does not leave out $p"; exit 1; }
done
channel=$(sed -nE 's/^channel = "(.*)"/\1/p' rust-toolchain.toml)
grep -q "rust:$channel-" "$D" || { echo "error: the image's toolchain is not rust-toolchain.toml's $channel"; exit 1; }
echo "bases pinned by digest, --locked, paths remapped, context trimmed, toolchain $channel"

echo "== scripts/pcrs.py"
h() { printf "%096d" 0 | tr 0 "$1"; }
out=$(printf '{"Measurements":{"HashAlgorithm":"Sha384 { ... }","PCR0":"%s","PCR1":"%s","PCR2":"%s"}}' \
  "$(h a)" "$(h b)" "$(h c)" | "$PY" scripts/pcrs.py)
grep -q -- "--pcr 0=$(h a) --pcr 1=$(h b) --pcr 2=$(h c)" <<<"$out" || { echo "error: $out"; exit 1; }
if echo '{"Measurements":{"HashAlgorithm":"Sha384","PCR0":"00"}}' | "$PY" scripts/pcrs.py 2>/dev/null; then
  echo "error: pcrs.py accepted a short PCR"; exit 1
fi
echo "deploy checks passed"
