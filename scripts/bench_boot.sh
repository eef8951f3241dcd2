#!/usr/bin/env bash
# Boot cost of sealed settings and encrypted weights: time from `serve` to its `listening` line for
# (a) the plain model, no settings — the baseline —, (b) the plain model with sealed settings unsealed
# through KMS (moto behind confidant-kms-gate), (c) the same weights encrypted, their key in the sealed
# settings. Emulated NSM, release
# binaries, N alternating rounds (default 3), medians; prints one JSON object.
# MODEL: a model directory (default: the 2.2 GB random bloom-560m of `make bench-model`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
N=${N:-3}
SRC=${MODEL:-target/bench-bloom-560m}
[ -f "$SRC/model.safetensors" ] || { echo "no $SRC/model.safetensors (make bench-model makes it)"; exit 2; }
D=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$D"' EXIT
"$BIN/confidant-ops" dev-ca --out "$D/ca" 2>/dev/null
"$BIN/confidant-model" demo-model --random --out "$D/demo" 2>/dev/null
mkdir "$D/plain" "$D/enc"
ln -s "$(realpath "$SRC/model.safetensors")" "$D/plain/model.safetensors"
for m in plain enc; do
  cp "$SRC/config.json" "$D/$m/"
  if [ -f "$SRC/tokenizer.json" ]; then cp "$SRC/tokenizer.json" "$D/$m/"; else cp "$D/demo/tokenizer.json" "$D/$m/"; fi
done
echo '{"max_new_tokens":64}' > "$D/settings.json"
cp "$D/settings.json" "$D/settings-only.json"
cp "$D/plain/model.safetensors" "$D/enc/model.safetensors"
"$BIN/confidant-ops" encrypt-weights --model "$D/enc" --settings "$D/settings.json" 2>/dev/null
rm "$D/enc/model.safetensors"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$PORT" > /dev/null 2>&1 &
pids+=($!)
# The key policy admitting the image of MODEL, for the gate.
policy() {
  # shellcheck disable=SC2046
  "$BIN/confidant-ops" kms-policy --account 111122223333 --admin-role arn:aws:iam::111122223333:role/KeyAdmin \
    --operator-role arn:aws:iam::111122223333:role/Operator \
    $("$BIN/confidant-enclave" measure --model "$1" | sed 's/^/--pcr /')
}
policy "$D/enc" > "$D/policy.json"
"$BIN/confidant-kms-gate" --upstream "127.0.0.1:$PORT" --root "$D/ca/root.pem" --policy "$D/policy.json" > "$D/gate.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 300); do grep -q listening "$D/gate.out" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
GATE=$(awk '{print $2}' "$D/gate.out")
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
KEY=$(.venv/bin/python -c "import boto3; print(boto3.client('kms', region_name='us-east-1', endpoint_url='http://127.0.0.1:$PORT').create_key()['KeyMetadata']['Arn'])")
"$BIN/confidant-ops" seal --key-id "$KEY" --in "$D/settings.json" --out "$D/settings.sealed" --kms-endpoint "http://$GATE" > /dev/null 2>&1
"$BIN/confidant-ops" seal --key-id "$KEY" --in "$D/settings-only.json" --out "$D/settings-only.sealed" --kms-endpoint "http://$GATE" > /dev/null 2>&1

# Milliseconds from start to the listening line.
boot() {
  local out=$D/serve.out start
  start=$(date +%s%N)
  "$BIN/confidant-enclave" serve --listen "unix:$D/e.sock" --nsm emulated --dev-ca "$D/ca" --threads 2 "$@" > "$out" 2> "$D/serve.log" &
  local pid=$!
  while ! grep -q listening "$out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$D/serve.log" >&2; exit 1; }
    sleep 0.01
  done
  echo $(( ($(date +%s%N) - start) / 1000000 ))
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$D/e.sock"
}
plain=(); settings=(); sealed=()
# The settings-only case unseals through the gate with the plain image's PCRs; restart the gate for it.
for _ in $(seq "$N"); do
  plain+=("$(boot --model "$D/plain")")
  sealed+=("$(boot --model "$D/enc" --sealed-settings "$D/settings.sealed" --kms-endpoint "http://$GATE")")
done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
policy "$D/plain" > "$D/policy2.json"
"$BIN/confidant-kms-gate" --upstream "127.0.0.1:$PORT" --root "$D/ca/root.pem" --policy "$D/policy2.json" > "$D/gate2.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 300); do grep -q listening "$D/gate2.out" 2>/dev/null && break; sleep 0.1; done
GATE=$(awk '{print $2}' "$D/gate2.out")
for _ in $(seq "$N"); do
  settings+=("$(boot --model "$D/plain" --sealed-settings "$D/settings-only.sealed" --kms-endpoint "http://$GATE")")
done
python3 - "$(stat -L -c %s "$D/plain/model.safetensors")" "${plain[*]}" "${settings[*]}" "${sealed[*]}" <<'PY'
import json, statistics, sys
size = int(sys.argv[1])
runs = {k: [int(x) for x in v.split()] for k, v in zip(["plain", "sealed_settings", "sealed_settings_encrypted_weights"], sys.argv[2:])}
med = {k: statistics.median(v) for k, v in runs.items()}
print(json.dumps({"weights_bytes": size, "boot_ms": runs, "median_ms": med,
                  "ratio_vs_plain": {k: round(v / med["plain"], 2) for k, v in med.items()}}))
PY
