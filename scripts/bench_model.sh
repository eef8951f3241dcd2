#!/usr/bin/env bash
# BLOOM speed against Hugging Face transformers, side by side: the same random-weight bloom-560m-shaped
# checkpoint, the same prompt (32 tokens), 64 greedy tokens, the same thread count, the programs
# alternating for ROUNDS rounds. Prints each run's JSON, then the median ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-target/bench-bloom-560m}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
TOOL=target/release/confidant-model
[ -f "$MODEL/model.safetensors" ] || python scripts/hf_bloom.py make-model "$MODEL"
out=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  python scripts/hf_bloom.py bench "$MODEL" --prompt-len 32 --new 64 --threads "$THREADS" | tee -a "$out/hf.jsonl"
  "$TOOL" bench --model "$MODEL" --prompt-len 32 --new 64 --threads "$THREADS" --dtype f32 --json | tee -a "$out/f32.jsonl"
  "$TOOL" bench --model "$MODEL" --prompt-len 32 --new 64 --threads "$THREADS" --dtype bf16 --json | tee -a "$out/bf16.jsonl"
done
"$TOOL" bench --model "$MODEL" --prompt-len 32 --new 16 --threads "$THREADS" --dtype f32 --bandwidth --json | tee "$out/bw-f32.json"
"$TOOL" bench --model "$MODEL" --prompt-len 32 --new 16 --threads "$THREADS" --dtype bf16 --bandwidth --json | tee "$out/bw-bf16.json"
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
d = pathlib.Path(sys.argv[1])
runs = {k: [json.loads(l) for l in (d / f"{k}.jsonl").read_text().splitlines()] for k in ("hf", "f32", "bf16")}
med = lambda k, f: statistics.median(r[f] for r in runs[k])
hf_tps, hf_pre = med("hf", "decode_tokens_per_s"), med("hf", "prefill_ms")
print(f"\nmedians over {len(runs['hf'])} alternating rounds:")
for k in ("hf", "f32", "bf16"):
    print(f"  {k:5} decode {med(k, 'decode_tokens_per_s'):7.2f} tok/s   prefill {med(k, 'prefill_ms'):8.1f} ms   peak RSS {med(k, 'peak_rss_mb'):7.0f} MB")
print(f"  f32  decode ratio vs transformers: {med('f32', 'decode_tokens_per_s') / hf_tps:.2f}x (target >= 1.3x)")
print(f"  bf16 decode ratio vs transformers f32: {med('bf16', 'decode_tokens_per_s') / hf_tps:.2f}x (target >= 2x)")
print(f"  f32  prefill ratio (transformers / ours): {hf_pre / med('f32', 'prefill_ms'):.2f}x (target >= 1.0x)")
for k in ("f32", "bf16"):
    bw = json.loads((d / f"bw-{k}.json").read_text())
    print(f"  {k:5} {bw['bytes_per_token_mb']:.0f} MB/token, bandwidth {bw['memory_bandwidth_gb_s']:.1f} GB/s: "
          f"{bw['decode_tokens_per_s']:.2f} tok/s = {100 * bw['fraction_of_bandwidth_bound']:.0f}% of the bound {bw['bandwidth_bound_tokens_per_s']:.2f}")
PY
