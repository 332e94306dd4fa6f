#!/usr/bin/env python3
"""Request-length trace for Vidur's TraceRequestLengthGenerator (columns num_prefill_tokens,num_decode_tokens).
BLIS speed workload: prompt ~ N(400,100) clipped to [50,1000]; output ~ N(4150,1000) clipped to [64,14336];
values rounded to ints, then clipped. numpy default_rng(42); 10,000 rows (prompts drawn first, then outputs)."""
import sys

import numpy as np
import pandas as pd

out = sys.argv[1]
n = 10_000
rng = np.random.default_rng(42)
prompt = np.clip(np.rint(rng.normal(400, 100, n)), 50, 1000).astype(int)
output = np.clip(np.rint(rng.normal(4150, 1000, n)), 64, 14336).astype(int)
pd.DataFrame({"num_prefill_tokens": prompt, "num_decode_tokens": output}).to_csv(out, index=False)
print(f"wrote {out}: {n} rows; prompt mean {prompt.mean():.1f} min {prompt.min()} max {prompt.max()}; "
      f"output mean {output.mean():.1f} min {output.min()} max {output.max()}; max total {(prompt+output).max()}")
