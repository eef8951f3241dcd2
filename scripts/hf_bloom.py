#!/usr/bin/env python3
"""Hugging Face transformers side of the BLOOM benchmark.

  hf_bloom.py make-model DIR [--seed N]   random-weight BLOOM with the exact bloom-560m config (2.2 GB, f32)
  hf_bloom.py bench DIR --prompt-len N --new N --threads N
                                          greedy decoding with the KV cache, one JSON object like
                                          `confidant-model bench`: prefill_ms, decode_tokens_per_s, ...

The prompt is the same token ids confidant-model bench uses: (i * 7919 + 13) % vocab.
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
from transformers import BloomConfig, BloomForCausalLM

BLOOM_560M = dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16, layer_norm_epsilon=1e-5,
                  apply_residual_connection_post_layernorm=False, bos_token_id=1, eos_token_id=2,
                  pad_token_id=3, tie_word_embeddings=True)


def make_model(out, seed):
    torch.manual_seed(seed)
    model = BloomForCausalLM(BloomConfig(**BLOOM_560M)).eval()
    model.save_pretrained(out, safe_serialization=True)
    print(f"wrote {out}", file=sys.stderr)


@torch.inference_mode()
def bench(path, prompt_len, new, threads):
    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = BloomForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()
    load_ms = (time.perf_counter() - t) * 1e3
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(prompt_len)]])
    t = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    prefill_ms = (time.perf_counter() - t) * 1e3
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    per_token = []
    for _ in range(new):
        t = time.perf_counter()
        nxt = logits.argmax(-1, keepdim=True)
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        per_token.append(time.perf_counter() - t)
    print(json.dumps({
        "implementation": "transformers", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "prompt_len": prompt_len, "new_tokens": new, "load_ms": load_ms, "prefill_ms": prefill_ms,
        "decode_tokens_per_s": new / sum(per_token), "decode_ms_median": statistics.median(per_token) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=560)
    b = sub.add_parser("bench")
    b.add_argument("dir")
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--new", type=int, default=64)
    b.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.cmd == "make-model":
        make_model(a.dir, a.seed)
    else:
        bench(a.dir, a.prompt_len, a.new, a.threads)


if __name__ == "__main__":
    main()
