#!/usr/bin/env python3
"""SYNTHETIC stand-in for Vidur's data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/attention.csv.
The real file (17.2 MB, Git LFS-sized) is absent from the available snapshot of microsoft/vidur, so this
script writes a file with the same schema and the same input grid that vidur/profiling/attention/main.py
profiles (max_seq_len 16384, batch sizes 1..128, TP 1/2/4/8, block 16, FlashInfer), with per-layer times
(ms) from a simple A100 model calibrated by eye against a few pages of the real file:
  prefill  : 0.010 + 4*c*(kv + c/2)*(32/tp)*128 FLOP / (150 TFLOP/s * min(1, c/256)^0.5)
  decode   : 0.008 + b*kv*2*(8/tp)*128*2 B / 1.2 TB/s
  kv save  : prefill 0.015 + c*2e-5, decode 0.002 + b*1e-5
with +-1% multiplicative noise (seed 0), rounded to 1 us like the real file.
Only the values the execution-time predictor trains on are affected; the simulator code is unmodified."""
import sys

import numpy as np
import pandas as pd

out = sys.argv[1]
MAX_SEQ = 16384

def chunk_sizes(m):
    s = (list(range(64, 129, 16)) + list(range(128, 1025, 32)) + list(range(1024, 4097, 64))
         + list(range(4096, 16385, 128)) + list(range(16384, 65537, 256)))
    return [c for c in s if c <= m]

def seq_lens(m):
    s = list(range(0, 1025, 32)) + list(range(1024, 4097, 64)) + list(range(4096, 65537, 256))
    return [x for x in s if x < m]

combos = []
for c in chunk_sizes(MAX_SEQ):
    combos += [(c, i * c, 1, True) for i in range(MAX_SEQ // c)]
combos += [(c, 0, 1, True) for c in seq_lens(MAX_SEQ)]
bss = [b for b in list(range(1, 129)) + list(range(128, 1025, 8)) if b <= 128]
combos += [(0, k, b, False) for k in seq_lens(MAX_SEQ) for b in bss]

def valid(c, k, b, p):
    return (b == 1 and c > 0 and c + k <= MAX_SEQ) if p else (c == 0 and 0 < k <= MAX_SEQ)

combos = [x for x in combos if valid(*x)]
rng = np.random.default_rng(0)
rows = []
for tp in (1, 2, 4, 8):
    for c, k, b, p in combos:
        if p:
            eff = 150e12 * min(1.0, c / 256) ** 0.5
            pre = 0.010 + 4 * c * (k + c / 2) * (32 / tp) * 128 / eff * 1e3
            dec = 0.0
            save = 0.015 + c * 2e-5
        else:
            pre = 0.0
            dec = 0.008 + b * k * 2 * (8 / tp) * 128 * 2 / 1.2e12 * 1e3
            save = 0.002 + b * 1e-5
        r = {}
        for name, v in (("attn_input_reshape", 0.0), ("attn_kv_cache_save", save), ("attn_prefill", pre),
                        ("attn_decode", dec), ("attn_output_reshape", 0.0)):
            samples = np.round(v * (1 + 0.01 * rng.standard_normal(5)), 3) if v else np.zeros(5)
            r[f"time_stats.{name}.min"] = samples.min()
            r[f"time_stats.{name}.max"] = samples.max()
            r[f"time_stats.{name}.mean"] = samples.mean()
            r[f"time_stats.{name}.median"] = float(np.median(samples))
            r[f"time_stats.{name}.std"] = samples.std()
        r.update(n_embd=4096, n_q_head=32, n_kv_head=8, block_size=16, num_tensor_parallel_workers=tp,
                 max_model_len=MAX_SEQ, batch_size=b, prefill_chunk_size=c, kv_cache_size=k,
                 is_prefill=p, attention_backend="AttentionBackend.FLASHINFER")
        rows.append(r)
pd.DataFrame(rows).to_csv(out, index=False)
print(f"wrote {out}: {len(rows)} rows ({len(combos)} per TP)")
