#!/usr/bin/env bash
# The main job end to end on the local default: enclave (emulated NSM) on a Unix socket, relay on UDP
# loopback, client pinned to the emulated PCRs and the development root. Run by `make demo`.
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
  [ -f "$MODEL/model.safetensors" ] || "$BIN/confidant-enclave" demo-model --out "$MODEL"
fi
[ -f "$DEMO/ca/root.pem" ] || "$BIN/confidant-enclave" dev-ca --out "$DEMO/ca"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting the enclave (emulated NSM) with model $MODEL"
"$BIN/confidant-enclave" serve --listen "unix:$DEMO/enclave.sock" --model "$MODEL" \
  --nsm emulated --dev-ca "$DEMO/ca" > "$DEMO/enclave.out" 2> "$DEMO/enclave.log" &
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

echo "== pinning the PCRs the emulated NSM reports (confidant-enclave measure)"
PINS=()
while read -r pcr; do PINS+=(--pcr "$pcr"); echo "   PCR$pcr" | cut -c1-60; done < <("$BIN/confidant-enclave" measure --model "$MODEL")
TRUST=(--relay 127.0.0.1:7443 --relay-ca "$DEMO/relay/cert.pem" --root "$DEMO/ca/root.pem" "${PINS[@]}")
export CONFIDANT_CACHE_DIR="$DEMO/cache"

echo "== confidant attest"
"$BIN/confidant" attest "${TRUST[@]}"
QUESTION="My name is Ana Ruiz and my plan number is 4471-22. Is a hearing aid covered by my health plan?"
echo "== confidant ask \"$QUESTION\""
echo "   (the demo model has random weights: the answer is random text, streamed through real libtorch)"
"$BIN/confidant" ask "${TRUST[@]}" --max-tokens 48 --temperature 0.9 --top-p 0.95 --seed 7 "$QUESTION"
echo "== what the relay saw (counts and timings only):"
grep -E "stream|connection" "$DEMO/relay.log" | tail -3 | sed 's/^/   /'
echo "== done; stopping the enclave and the relay"
