#!/usr/bin/env python3
"""The table of scripts/bench_model.sh: medians over its rounds, each figure as a ratio against the
baseline the engine goal names, measured in the same run.

  bench_table.py OUT_DIR     (reads the *.jsonl / *.json files bench_model.sh wrote there)
"""
import json
import pathlib
import platform
import statistics
import sys

out = pathlib.Path(sys.argv[1])


def lines(name):
    p = out / name
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip().startswith("{")] if p.exists() else []


med = statistics.median
llama, ours, hf = lines("llama.jsonl"), lines("confidant.jsonl"), lines("hf.jsonl")
engine, server, lq = lines("engine.jsonl"), lines("server.jsonl"), lines("llama-quality.jsonl")
quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else {}


def ll(typ, test):
    v = [r["tokens_per_s"] for r in llama if r.get("type") == typ and r.get("test") == test]
    return med(v) if v else None


def ll_batched(typ, n):
    v = [r["decode_tokens_per_s"] for r in llama
         if r.get("type") == typ and r.get("test") == "batched" and r.get("parallel") == n]
    return med(v) if v else None


def ours_prefill(dtype, n):
    v = [p["tokens_per_s"] for r in ours if r["dtype"] == dtype for p in r["prefill"] if p["prompt_len"] == n]
    return med(v) if v else None


def ours_decode(dtype, b, key="tokens_per_s"):
    v = [d[key] for r in ours if r["dtype"] == dtype for d in r["decode"] if d["sequences"] == b]
    return med(v) if v else None


def ours_field(dtype, key):
    v = [r[key] for r in ours if r["dtype"] == dtype]
    return med(v) if v else None


rows = []


def row(goal, base_name, base, ours_name, value, target, higher=True, fmt="{:.1f}"):
    if base is None or value is None:
        rows.append((goal, base_name, "–", ours_name, "–", "–", target, "not measured"))
        return
    ratio = value / base
    met = ratio >= target if higher else ratio <= target
    rows.append((goal, base_name, fmt.format(base), ours_name, fmt.format(value), f"{ratio:.2f}×",
                 f"≥ {target}×" if higher else f"≤ {target}×", "yes" if met else "**no**"))


for dtype, typ, target in (("f32", "f32", 1.0), ("bf16", "f16", 1.0), ("int8", "q8_0", 1.1)):
    row(f"decode, 1 sequence (tok/s)", f"llama.cpp {typ}", ll(typ, "tg64"), f"Confidant {dtype}",
        ours_decode(dtype, 1), target)
for n in (32, 512):
    for dtype, typ in (("f32", "f32"), ("bf16", "f16"), ("int8", "q8_0")):
        row(f"prefill {n} tokens (tok/s)", f"llama.cpp {typ}", ll(typ, f"pp{n}"), f"Confidant {dtype}",
            ours_prefill(dtype, n), 1.0)
for b in (8, 16):
    best = max(("int8", "bf16"), key=lambda d: ours_decode(d, b) or 0)
    row(f"aggregate decode, {b} sequences (tok/s)", "llama.cpp q8_0 batched", ll_batched("q8_0", b),
        f"Confidant {best} engine", ours_decode(best, b), 1.1)
    for d in ("int8", "bf16"):
        v = [s["decode_tokens_per_s_aggregate"] for s in server if s.get("dtype") == d and s.get("clients") == b]
        row(f"through the server, {b} clients (tok/s)", f"Confidant {d} engine", ours_decode(d, b),
            f"Confidant {d} server", med(v) if v else None, 0.8)

ttft_rows = []
for e in engine:
    ttft_rows.append(e)

hf_decode = med([r["decode_tokens_per_s"] for r in hf]) if hf else None
hf_prefill = med([32 / (r["prefill_ms"] / 1e3) for r in hf]) if hf else None

print("| goal | baseline | figure | Confidant | figure | ratio | target | met |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")

print("\n| engine (time to first token) | dtype | figure | target | met |")
print("|---|---|---|---|---|")
seen = set()
for e in ttft_rows:
    key = (e["dtype"], "ttft")
    if key not in seen:
        seen.add(key)
        print(f"| a question arriving while {e['others']} others stream: TTFT {e['ttft_while_others_stream_ms']:.0f} ms, "
              f"its prefill alone {e['ttft_alone_ms']:.0f} ms + 2 steps of {e['decode_step_ms_with_others']:.0f} ms "
              f"= {e['ttft_bound_ms']:.0f} ms | {e['dtype']} | {e['ttft_while_others_stream_ms'] / e['ttft_bound_ms']:.2f}× the bound "
              f"| ≤ 1.0× | {'yes' if e['ttft_within_bound'] else '**no**'} |")
    r = e["system_prompt_ttft_ratio"]
    print(f"| first turn after a {e['system_prompt_bytes']}-byte system prompt ({e['system_prompt_tokens']} tokens): "
          f"TTFT {e['ttft_after_system_prompt_ms']:.0f} ms vs {e['ttft_alone_ms']:.0f} ms without | {e['dtype']} | "
          f"{r:.2f}× | ≤ 1.2× | {'yes' if r <= 1.2 else '**no**'} |")

print("\n| dtype | weights (MB) | bytes read per step (MB) | decode 1 / 8 / 16 seq: roofline fraction | "
      "peak RSS (MB) | peak ÷ (weights + 1536 MiB KV budget) | peak ÷ (weights + KV used) |")
print("|---|---|---|---|---|---|---|")
for d in ("f32", "bf16", "int8"):
    if ours_field(d, "weights_mb") is None:
        continue
    fr = " / ".join(f"{ours_decode(d, b, 'roofline_fraction'):.2f}" for b in (1, 8, 16)
                    if ours_decode(d, b, 'roofline_fraction') is not None)
    print(f"| {d} | {ours_field(d, 'weights_mb'):.0f} | {ours_field(d, 'bytes_per_step_mb'):.0f} | {fr} | "
          f"{ours_field(d, 'peak_rss_mb'):.0f} | {ours_field(d, 'peak_rss_ratio'):.2f} (≤ 1.1) | "
          f"{ours_field(d, 'peak_rss_ratio_to_kv_used'):.2f} |")
bw = ours_field("f32", "read_bandwidth_gb_per_s")
if bw:
    print(f"\nRoofline: bytes of weights read per decoding step ÷ the measured 2-thread read bandwidth "
          f"({bw:.1f} GB/s, median of the runs).")

if hf_decode:
    print(f"\nHugging Face transformers f32 (eager): decode {hf_decode:.1f} tok/s, prefill 32 {hf_prefill:.0f} tok/s; "
          f"Confidant f32 decode {ours_decode('f32', 1) / hf_decode:.2f}×, bf16 {ours_decode('bf16', 1) / hf_decode:.2f}×, "
          f"int8 {ours_decode('int8', 1) / hf_decode:.2f}× that.")

q = quality.get("quality", {})
if q or lq:
    print("\n| quality against f32 (8 chunks of 128 tokens, second halves scored) | top-1 agreement | mean KL divergence | greedy 32-token agreement |")
    print("|---|---|---|---|")
    for d in ("bf16", "int8"):
        if d in q:
            print(f"| Confidant {d} | {q[d]['top1_agreement']:.3f} | {q[d]['mean_kld']:.2e} | {q[d]['greedy_token_agreement']:.3f} |")
    for r in lq:
        t1 = r["top1_agreement"]
        print(f"| llama.cpp {r['type']} | {t1:.3f} | {r['mean_kld']:.2e} | – |" if t1 is not None else
              f"| llama.cpp {r['type']} | – | – | – |")

print(f"\nMachine: {platform.machine()}, {platform.node() and 'this host'}; "
      f"{len(ours) // 3 if ours else 0} round(s), medians.")
