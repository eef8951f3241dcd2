#!/usr/bin/env bash
# The main job end to end on the local default: settings sealed with KMS (moto behind the attestation
# gate), the enclave (emulated NSM) on a Unix socket unsealing them, the relay on UDP loopback, and the
# client pinned to the operator's release key (a signed manifest lists the emulated PCRs), the
# development root and the settings digest.
#
#   scripts/demo.sh        the whole story, then everything stops   (make demo)
#   scripts/demo.sh up     start the stack and leave it running       (make demo-up)
#   scripts/demo.sh down   stop it                                    (make demo-down)
#
# The model is the demo BLOOM the project trains on its own question-and-answer corpus (once, about a
# minute), unless real weights sit in models/bloom-560m or CONFIDANT_MODEL names a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
DEMO=${DEMO_DIR:-demo}
MODEL=${CONFIDANT_MODEL:-}
MODE=${1:-story}
PIDS="$DEMO/stack.pids"
mkdir -p "$DEMO"

stop_stack() {
  if [ -f "$PIDS" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done < "$PIDS"
    rm -f "$PIDS"
  fi
}
case "$MODE" in
  down) stop_stack; echo "demo stack stopped"; exit 0 ;;
  up | story) ;;
  *) echo "usage: scripts/demo.sh [up|down]" >&2; exit 2 ;;
esac
stop_stack

# Real weights, if a user put them where the README says; else the trained demo model.
if [ -z "$MODEL" ] && [ -f models/bloom-560m/model.safetensors ] && [ -f models/bloom-560m/tokenizer.json ]; then
  MODEL=models/bloom-560m
fi
if [ -z "$MODEL" ]; then
  MODEL=$DEMO/model
  if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "== training the demo model on model/assets/demo-qa.txt (once; about a minute on 2 cores)"
    "$BIN/confidant-model" demo-model --out "$MODEL" 2> "$DEMO/train.log" || { cat "$DEMO/train.log"; exit 1; }
    tail -1 "$DEMO/train.log" | sed 's/^/   /'
  fi
fi
[ -f "$DEMO/ca/root.pem" ] || "$BIN/confidant-ops" dev-ca --out "$DEMO/ca" 2> /dev/null

pids=()
if [ "$MODE" = story ]; then
  cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
  trap cleanup EXIT
fi
# Started in their own sessions so that `up` can leave them running after this script exits.
start() { setsid "$@" & pids+=($!); echo $! >> "$PIDS"; }

# The PCRs the emulated NSM will report: the key policy requires them, the release manifest lists them.
PINS=()
while read -r pcr; do PINS+=(--pcr "$pcr"); done < <("$BIN/confidant-enclave" measure --model "$MODEL")
MEASURED=$("$BIN/confidant-enclave" measure --model "$MODEL" --json)
MODEL_DIGEST=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["model_digest"])' <<< "$MEASURED")
TUPLE=$(python3 -c 'import json, sys; p = json.load(sys.stdin)["pcrs"]; print(",".join(p[k] for k in "012"))' <<< "$MEASURED")

echo "== sealing the settings under a KMS key (moto behind confidant-kms-gate, as AWS KMS would gate them)"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start .venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" > "$DEMO/moto.log" 2>&1
# The key policy, as an operator would put it on the key in AWS; the gate enforces it for moto.
"$BIN/confidant-ops" kms-policy --account 111122223333 --admin-role arn:aws:iam::111122223333:role/KeyAdmin \
  --operator-role arn:aws:iam::111122223333:role/Operator "${PINS[@]}" > "$DEMO/key-policy.json"
start "$BIN/confidant-kms-gate" --upstream "127.0.0.1:$MOTO_PORT" --root "$DEMO/ca/root.pem" \
  --policy "$DEMO/key-policy.json" > "$DEMO/gate.out" 2> "$DEMO/gate.log"
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

echo "== signing release 1 with the operator's release key (confidant-ops release-sign): this image's PCR0/1/2"
[ -f "$DEMO/release/release-key.pk8" ] || "$BIN/confidant-ops" release-key --out "$DEMO/release" > /dev/null 2>&1
RELEASE_KEY=$(cat "$DEMO/release/release-key.pub")
"$BIN/confidant-ops" release-sign --version 1 --pcrs "$TUPLE" --model-digest "$MODEL_DIGEST" \
  --settings-digest "$SETTINGS_DIGEST" --key "$DEMO/release/release-key.pk8" --out "$DEMO/release/release-1.cose" 2>&1 \
  | sed 's/^/   /'

echo "== starting the enclave (emulated NSM) with $MODEL; it unseals its settings through KMS"
rm -f "$DEMO/enclave.sock"
start "$BIN/confidant-enclave" serve --listen "unix:$DEMO/enclave.sock" --model "$MODEL" \
  --nsm emulated --dev-ca "$DEMO/ca" --sealed-settings "$DEMO/settings.sealed" \
  --kms-endpoint "http://$GATE" > "$DEMO/enclave.out" 2> "$DEMO/enclave.log"
echo "== starting the relay on 127.0.0.1:7443"
start "$BIN/confidant-relay" --listen 127.0.0.1:7443 --upstream "unix:$DEMO/enclave.sock" \
  --self-signed "$DEMO/relay" --release-manifest "$DEMO/release/release-1.cose" > "$DEMO/relay.out" 2> "$DEMO/relay.log"
for _ in $(seq 600); do
  grep -q listening "$DEMO/enclave.out" 2>/dev/null && grep -q listening "$DEMO/relay.out" 2>/dev/null && break
  sleep 0.1
done
grep -q listening "$DEMO/enclave.out" || { echo "the enclave did not start:"; cat "$DEMO/enclave.log"; exit 1; }
grep -q listening "$DEMO/relay.out" || { echo "the relay did not start (is 127.0.0.1:7443 taken?):"; cat "$DEMO/relay.log"; exit 1; }

# What the client trusts, written once to a config file: from here on `confidant` needs no flags.
{
  echo "# Written by scripts/demo.sh: the local demo stack and what the client pins for it."
  echo "relay = \"127.0.0.1:7443\""
  echo "relay_ca = \"relay/cert.pem\""
  echo "roots = [\"ca/root.pem\"]"
  echo "settings_digest = \"$SETTINGS_DIGEST\""
  echo "# The operator's release key: an enclave is trusted when a valid release it signed lists its PCRs."
  echo "release_key = \"$RELEASE_KEY\""
} > "$DEMO/config.toml"
# The raw PCRs, for checking saved documents and receipts offline.
{
  echo "[pcrs]"
  for ((i = 1; i < ${#PINS[@]}; i += 2)); do echo "${PINS[i]}" | sed 's/^\([0-9]*\)=\(.*\)/\1 = "\2"/'; done
} > "$DEMO/pcrs.toml"
export CONFIDANT_CONFIG="$DEMO/config.toml" CONFIDANT_CACHE_DIR="$DEMO/cache"
C="$BIN/confidant"

if [ "$MODE" = up ]; then
  echo "== the demo stack is running (stop it with: make demo-down). Try:"
  echo "   export CONFIDANT_CONFIG=$DEMO/config.toml CONFIDANT_CACHE_DIR=$DEMO/cache"
  echo "   $C attest"
  echo "   $C ask \"Is a hearing aid covered by my health plan?\""
  echo "   $C chat"
  exit 0
fi

echo "== what the client trusts ($DEMO/config.toml)"
echo "   root      $DEMO/ca/root.pem: the development CA the emulated NSM signs with (NOT the AWS Nitro root)"
echo "   release   key ${RELEASE_KEY:0:24}… ($DEMO/release/release-key.pub); release 1 lists this image:"
for ((i = 1; i < ${#PINS[@]}; i += 2)); do echo "   PCR${PINS[i]}" | sed 's/=/  /'; done
echo "   settings  $SETTINGS_DIGEST"

echo "== a wrong pin is refused before anything is sent: confidant attest --pcr 0=<another image>"
set +e
"$C" attest --pcr "0=$(printf '%096d' 0 | tr 0 a)" 2>&1 | head -1 | cut -c1-150 | sed 's/^/   /'
echo "   (exit ${PIPESTATUS[0]})"
set -e

echo "== confidant attest"
"$C" attest --out "$DEMO/attestation.json" | sed 's/^/   /'
echo "== confidant verify $DEMO/attestation.json (offline: every check ask makes, from the saved file)"
"$C" verify "$DEMO/attestation.json" --root "$DEMO/ca/root.pem" --max-age 3600 --policy <(sed -n '/^settings_digest/p' "$DEMO/config.toml"; cat "$DEMO/pcrs.toml") \
  | grep -E "valid|root|pinned|model|settings|key " | sed 's/^/   /'

QUESTION="My name is Ana Ruiz and my plan number is 4471-22. Is a hearing aid covered by my health plan?"
echo "== confidant ask \"$QUESTION\""
"$C" ask --temperature 0 --max-tokens 128 --receipt "$DEMO/receipt.json" "$QUESTION" 2> "$DEMO/ask.err" \
  | tee "$DEMO/answer.out" | fold -s -w 100 | sed 's/^/   /'
sed 's/^/   /' "$DEMO/ask.err"
# The answer as streamed, without the newline ask ends it with.
printf '%s' "$QUESTION" > "$DEMO/question.txt"
head -c -1 "$DEMO/answer.out" > "$DEMO/answer.txt"
echo "== confidant verify-receipt $DEMO/receipt.json (offline: this enclave signed this answer to this question)"
"$C" verify-receipt "$DEMO/receipt.json" --root "$DEMO/ca/root.pem" --policy "$DEMO/pcrs.toml" \
  --question "$DEMO/question.txt" --answer "$DEMO/answer.txt" | grep -E "valid|PCR0|model|answer |covers" | sed 's/^/   /'
echo "== what the relay saw (counts and timings only):"
grep -E "stream|connection" "$DEMO/relay.log" | tail -2 | sed 's/^/   /'
echo "== the KMS gate released the settings key only to the attested enclave:"
sed 's/^/   /' "$DEMO/gate.log" | tail -2
echo "== done; stopping the stack. To keep one running and try it yourself:"
echo "   make demo-up"
echo "   export CONFIDANT_CONFIG=$DEMO/config.toml CONFIDANT_CACHE_DIR=$DEMO/cache"
echo "   $C ask \"When should I sign up for Medicare?\"    # or: $C chat"
echo "   make demo-down"
rm -f "$PIDS"
