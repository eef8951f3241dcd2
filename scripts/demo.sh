#!/usr/bin/env bash
# The main job end to end on the local default: settings sealed with KMS (moto behind the attestation
# gate), enclave (emulated NSM) on a Unix socket unsealing them, relay on UDP loopback, client pinned
# to the emulated PCRs, the development root and the settings digest. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
DEMO=${DEMO_DIR:-demo}
MODEL=${CONFIDANT_MODEL:-}
mkdir -p "$DEMO"

# Real weights, if a user put them where the README says; else the generated demo model.
if [ -z "$MODEL" ] && [ -f models/bloom-560m/model.safetensors ] && [ -f models/bloom-560m/tokenizer.json ]; then
  MODEL=models/bloom-560m
fi
if [ -z "$MODEL" ]; then
  MODEL=$DEMO/model
  [ -f "$MODEL/model.safetensors" ] || "$BIN/confidant-model" demo-model --out "$MODEL"
fi
[ -f "$DEMO/ca/root.pem" ] || "$BIN/confidant-ops" dev-ca --out "$DEMO/ca"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The PCRs the emulated NSM will report: the key policy requires them, the client pins them.
PINS=()
while read -r pcr; do PINS+=(--pcr "$pcr"); done < <("$BIN/confidant-enclave" measure --model "$MODEL")

echo "== sealing the settings under a KMS key (moto behind confidant-kms-gate, as AWS KMS would gate them)"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" > "$DEMO/moto.log" 2>&1 &
pids+=($!)
# The key policy, as an operator would put it on the key in AWS; the gate enforces it for moto.
"$BIN/confidant-ops" kms-policy --account 111122223333 --admin-role arn:aws:iam::111122223333:role/KeyAdmin \
  --operator-role arn:aws:iam::111122223333:role/Operator "${PINS[@]}" > "$DEMO/key-policy.json"
"$BIN/confidant-kms-gate" --upstream "127.0.0.1:$MOTO_PORT" --root "$DEMO/ca/root.pem" --policy "$DEMO/key-policy.json" \
  > "$DEMO/gate.out" 2> "$DEMO/gate.log" &
pids+=($!)
for _ in $(seq 300); do
  grep -q listening "$DEMO/gate.out" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break
  sleep 0.1
done
GATE=$(awk '{print $2}' "$DEMO/gate.out")
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
KEY=$(.venv/bin/python -c "import boto3; print(boto3.client('kms', region_name='us-east-1', endpoint_url='http://127.0.0.1:$MOTO_PORT').create_key(Description='confidant demo settings')['KeyMetadata']['Arn'])")
"$BIN/confidant-ops" seal --key-id "$KEY" --in enclave/assets/demo-settings.json \
  --out "$DEMO/settings.sealed" --kms-endpoint "http://$GATE" > "$DEMO/seal.out" 2> "$DEMO/seal.log" \
  || { echo "sealing failed:"; cat "$DEMO/seal.log" "$DEMO/gate.log"; exit 1; }
SETTINGS_DIGEST=$(sed -n 's/^settings digest //p' "$DEMO/seal.out")
echo "   key $KEY"
echo "   settings digest $SETTINGS_DIGEST (the client pins it)"

echo "== starting the enclave (emulated NSM) with model $MODEL; it unseals the settings through KMS"
"$BIN/confidant-enclave" serve --listen "unix:$DEMO/enclave.sock" --model "$MODEL" \
  --nsm emulated --dev-ca "$DEMO/ca" --sealed-settings "$DEMO/settings.sealed" \
  --kms-endpoint "http://$GATE" > "$DEMO/enclave.out" 2> "$DEMO/enclave.log" &
pids+=($!)
echo "== starting the relay on 127.0.0.1:7443"
"$BIN/confidant-relay" --listen 127.0.0.1:7443 --upstream "unix:$DEMO/enclave.sock" \
  --self-signed "$DEMO/relay" > "$DEMO/relay.out" 2> "$DEMO/relay.log" &
pids+=($!)
for _ in $(seq 600); do
  grep -q listening "$DEMO/enclave.out" 2>/dev/null && grep -q listening "$DEMO/relay.out" 2>/dev/null && break
  sleep 0.1
done
grep -q listening "$DEMO/enclave.out" || { echo "the enclave did not start:"; cat "$DEMO/enclave.log"; exit 1; }
grep -q listening "$DEMO/relay.out" || { echo "the relay did not start (is 127.0.0.1:7443 taken?):"; cat "$DEMO/relay.log"; exit 1; }

echo "== pinning the PCRs the emulated NSM reports (confidant-enclave measure) and the settings digest"
for ((i = 1; i < ${#PINS[@]}; i += 2)); do echo "   PCR${PINS[i]}" | cut -c1-60; done
TRUST=(--relay 127.0.0.1:7443 --relay-ca "$DEMO/relay/cert.pem" --root "$DEMO/ca/root.pem" "${PINS[@]}"
  --settings-digest "$SETTINGS_DIGEST")
export CONFIDANT_CACHE_DIR="$DEMO/cache"

echo "== confidant attest"
"$BIN/confidant" attest "${TRUST[@]}"
QUESTION="My name is Ana Ruiz and my plan number is 4471-22. Is a hearing aid covered by my health plan?"
echo "== confidant ask \"$QUESTION\""
echo "   (the demo model has random weights: the answer is random text, streamed through real libtorch)"
"$BIN/confidant" ask "${TRUST[@]}" --max-tokens 48 --temperature 0.9 --top-p 0.95 --seed 7 "$QUESTION"
echo "== what the relay saw (counts and timings only):"
grep -E "stream|connection" "$DEMO/relay.log" | tail -3 | sed 's/^/   /'
echo "== the KMS gate, enforcing the key policy, released the settings key only to the attested enclave:"
sed 's/^/   /' "$DEMO/gate.log"
echo "== done; stopping the enclave, the relay and the KMS"
