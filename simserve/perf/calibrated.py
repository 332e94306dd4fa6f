"""The calibrated step-time model: one step composed from fitted operations (simserve.perf.fits), layer by layer.

Per layer, on one GPU of a tensor-parallel group of `tp`:
- GEMMs of the projections and FFN at m = tokens in the step (QKV, O, gate+up, down; MLA's q/kv low-rank pairs;
  a mixture of experts' routed experts as one grouped GEMM over the experts the step's tokens touch);
- attention: each prefill chunk (new tokens after its cached prefix) and the decode batch. A decode batch with
  mixed context lengths is timed as max(T(b, mean context), T(1, longest context)): the kernel's work follows the
  total KV read, but no batch finishes before its longest sequence;
- memory-bound kernels (two RMSNorms with the residual add fused, rotary embedding, SiLU-and-multiply);
- two all-reduces of m x hidden activations when tp > 1.
Then the LM head for the sampled sequences and a per-step overhead (scheduling, sampling, launch gaps) that kernel
profiles cannot see: from the fit (a steps table measures it) or the scenario.

Every operation goes through the fit's tables, so a fit of another GPU, or a datasheet port, changes the whole
step consistently. Decode runs are vectorised: the token-dependent part is constant over a run and the attention
part is interpolated along a per-batch-size table of context lengths.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Final

import numpy as np

from simserve.hardware import ModelSpec
from simserve.perf.analytic import causal_pairs
from simserve.perf.base import (
    Batch,
    StepTimes,
    interp,
    kept_context_sums,
    np_add,
    np_arange,
    np_exp,
    np_log,
    np_maximum,
    np_multiply,
    np_true_divide,
)
from simserve.perf.fits import BYTES, Fit, FitError, OpFit, attention_features


def _int_grid(high: int, num: int) -> np.ndarray:
    """The distinct integers nearest a geometric grid from 1 to `high` (`np.unique` of an increasing array,
    without the import of numpy.ma that `np.unique` costs at start-up)."""
    x = np.round(np.geomspace(1, high, num))
    return x[np.concatenate([[True], x[1:] != x[:-1]])].astype(float)


_KV_GRID = _int_grid(1 << 20, 160)
_NEW_GRID = _int_grid(1 << 17, 120)
_CACHED_GRID = np.concatenate([[0.0], _int_grid(1 << 20, 120)])
_LOG_KV: Final = np.log(_KV_GRID)
_LOG_NEW = np.log(_NEW_GRID)
_LOG_CACHED = np.log1p(_CACHED_GRID)
# decode_run_stats_s gives a run of at most this many steps as a list (perf.base.StepTimes), whose step ends the
# engine then keeps as a list. Chosen by callgrind's counts of the runs (docs/performance.md, stage 18): at 48 the
# light load's run took 1.0% fewer instructions and the quick start's 2.6%; at 128, 0.5% and 3.0%.
_LIST_STEPS: Final = 48
# As floats for the compiled scalar paths (typed: native float arithmetic, the same IEEE operations as Python's).
_NEW_LIST: Final[list[float]] = _NEW_GRID.tolist()
_CACHED_LIST: Final[list[float]] = _CACHED_GRID.tolist()
_LOG_NEW_LIST: Final[list[float]] = _LOG_NEW.tolist()
_LOG_CACHED_LIST: Final[list[float]] = _LOG_CACHED.tolist()
_LOG_KV_LIST: Final[list[float]] = _LOG_KV.tolist()
# How far (in log seconds) one side of a decode run's attention, max(b sequences of the mean context, one of the
# longest), must stay above the other over the whole run for the other not to be computed: some 10^6 times the
# rounding of the bounds taken in plain Python (math.log is not numpy's log, but both round within an ulp or two).
_DOMINANCE_MARGIN_LOG_S: Final = 1e-9
# Decode attention rows are built for this many consecutive batch sizes at a time (1-16, 17-32, ...).
_ROW_BLOCK: Final = 16


def _log_attention_near(row: list[float], kv: float) -> float:
    """np.interp(log(kv), _LOG_KV, row) within rounding, in plain Python (floats throughout, compiled): a bound, not
    a step's time."""
    x = math.log(kv)
    grid = _LOG_KV_LIST
    if x < grid[0]:
        return row[0]
    lo, hi = 0, len(grid) - 1
    if x >= grid[hi]:
        return row[hi]
    while hi - lo > 1:  # grid[lo] <= x < grid[hi]
        mid = (lo + hi) >> 1
        if grid[mid] <= x:
            lo = mid
        else:
            hi = mid
    x0 = grid[lo]
    return row[lo] + (row[hi] - row[lo]) / (grid[hi] - x0) * (x - x0)


class CalibratedPerf:
    """The calibrated PerfModel of one replica: a fit's operations composed for `model` on `tensor_parallel` GPUs."""

    def __init__(self, fit: Fit, model: ModelSpec, tensor_parallel: int, overhead_s: float,
                 expert_parallel: bool = False, data_parallel_attention: bool = False) -> None:
        self.fit = fit
        self.gpu = fit.effective_gpu
        self.model = model
        self.tp = tp = tensor_parallel
        self.overhead_s = overhead_s
        self.expert_parallel = expert_parallel
        missing = [t for t in ("gemm", "context_attention", "generation_attention") if t not in fit.tables]
        if missing:
            raise FitError(f"fit {fit.path or ''}: the calibrated model needs tables {', '.join(missing)}")
        if tp > 1 and "allreduce" not in fit.tables:
            raise FitError(f"fit {fit.path or ''}: tensor_parallel {tp} needs an allreduce table")
        self.data_parallel_attention = data_parallel_attention
        dp = data_parallel_attention and tp > 1
        self.heads = model.num_attention_heads if dp else max(1, model.num_attention_heads // tp)
        self.kv_heads = model.num_kv_heads if dp else max(1, model.num_kv_heads // tp)
        self._token_table: list[float] = []
        self._lm_table: list[float] = []
        self._decode_rows: dict[int, np.ndarray] = {}
        self._rising_rows: dict[int, tuple[list[float], float]] = {}
        self._prefill_table: np.ndarray | None = None
        self._prefill_rows: list[list[float]] | None = None
        # A decode run's constant ufunc operands as 0-d arrays, which numpy takes without converting a Python float
        # (about 0.3 us a call): the layers, and per batch size n, n and the step's time outside attention.
        self._layers_0d = np.full((), float(model.num_layers))
        self._run_operands: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._layers_moe = 0 if model.moe is None else model.num_layers - model.moe.num_dense_layers
        self._layers_dense = model.num_layers - self._layers_moe

    # -- operations ---------------------------------------------------------------------------------------
    def gemm_s(self, m: np.ndarray, n: float, k: float, weight_bytes_per_value: float | None = None) -> np.ndarray:
        """Dense GEMMs of m tokens with an (n x k) weight; weights of another width (FP8 1 byte) change the
        weight-streaming bytes and keep the measured correction."""
        g = self.fit.tables["gemm"]
        m = np.asarray(m, dtype=float)
        cols = {"m": m, "n": np.full_like(m, n), "k": np.full_like(m, k)}
        wb = self.model.bytes_per_value if weight_bytes_per_value is None else weight_bytes_per_value
        bw, peak = self.gpu.hbm_bandwidth_bytes_per_s, self.gpu.peak_flops_per_s
        x = np.column_stack([np.ones_like(m), 2 * m * n * k / peak,
                             (BYTES * (m * k + m * n) + wb * n * k) / bw])
        return g.predict_from_features(x, cols)

    def grouped_gemm_s(self, m_routed: np.ndarray, experts: np.ndarray, n: float, k: float) -> np.ndarray:
        """One grouped (fused-MoE) GEMM: `experts` weight matrices (n x k) read once each, m_routed token rows
        in all: the fitted GEMM roofline terms, one launch, no per-shape correction."""
        g = self.fit.tables["gemm"]
        bw, peak = self.gpu.hbm_bandwidth_bytes_per_s, self.gpu.peak_flops_per_s
        flops = 2 * m_routed * n * k
        nbytes = BYTES * m_routed * (n + k) + self.model.bytes_per_value * experts * n * k
        return g.coef[0] + g.coef[1] * flops / peak + g.coef[2] * nbytes / bw

    def elementwise_s(self, op: str, m: np.ndarray, width: float) -> np.ndarray:
        t = self.fit.tables.get(f"elementwise/{op}")
        m = np.asarray(m, dtype=float)
        if t is not None:
            return t.predict_s({"num_tokens": m, "width": np.full_like(m, width)}, self.gpu)
        g = self.fit.tables["gemm"]  # fallback: a memory-bound kernel at the GEMMs' launch floor and bandwidth
        return g.coef[0] + g.coef[2] * 2 * BYTES * m * width / self.gpu.hbm_bandwidth_bytes_per_s

    def allreduce_s(self, nbytes: np.ndarray) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=float)
        return self.fit.tables["allreduce"].predict_s(
            {"num_gpus": np.full_like(nbytes, self.tp), "message_bytes": nbytes}, self.gpu)

    def experts_touched(self, tokens: np.ndarray) -> np.ndarray:
        """Expected distinct routed experts the step's tokens use: E (1 - (1 - k/E)^tokens), uniform routing."""
        moe = self.model.moe
        assert moe is not None
        e, k = moe.num_experts, moe.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** np.asarray(tokens, dtype=float))

    def token_costs_s(self, m: np.ndarray) -> np.ndarray:
        """Everything in a step that depends only on its token count m (all layers, not attention).

        Tensor parallelism shards heads and FFN widths over the group (two all-reduces a layer). Data-parallel
        attention gives each GPU m/tp of the tokens with every head and dense weights replicated (no all-reduce),
        and makes MoE layers expert-parallel. Expert parallelism splits whole experts over the GPUs, with a
        dispatch and a combine all-to-all in place of the MLP all-reduce."""
        md = self.model
        tp = self.tp
        h, d = md.hidden_size, md.head_dim
        hg, kvg = self.heads, self.kv_heads
        m = np.asarray(m, dtype=float)
        dp = self.data_parallel_attention and tp > 1
        ma = m / tp if dp else m  # tokens one GPU's attention (and dense layers) computes
        shard = 1 if dp else tp  # how the dense weights are split
        if md.mla is None:
            attn = self.gemm_s(ma, (hg + 2 * kvg) * d, h) + self.gemm_s(ma, h, hg * d)
            rope_width = (hg + kvg) * d
        else:
            a = md.mla
            q_in = a.q_lora_rank or h
            attn = (self.gemm_s(ma, a.kv_lora_rank + a.qk_rope_head_dim, h)
                    + self.gemm_s(ma, hg * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)
                    + self.gemm_s(ma, hg * (a.qk_nope_head_dim + a.qk_rope_head_dim), q_in)
                    + self.gemm_s(ma, h, hg * a.v_head_dim))
            if a.q_lora_rank:
                attn = attn + self.gemm_s(ma, a.q_lora_rank, h)
            rope_width = (hg + 1) * a.qk_rope_head_dim
        norms = 2 * self.elementwise_s("rmsnorm", ma, h) + self.elementwise_s("rope", ma, rope_width)
        one_ar = self.allreduce_s(m * h * BYTES) if tp > 1 and not dp else np.zeros_like(m)
        inter = md.ffn_size / shard
        dense_ffn = (self.gemm_s(ma, 2 * inter, h) + self.gemm_s(ma, h, inter)
                     + self.elementwise_s("silu_mul", ma, inter))
        total = self._layers_dense * (attn + norms + 2 * one_ar + dense_ffn)
        if self._layers_moe:
            moe = md.moe
            assert moe is not None
            ie = moe.expert_intermediate_size
            routed = m * moe.experts_per_token
            touched = self.experts_touched(m)
            width: float
            if (self.expert_parallel or dp) and tp > 1:
                experts, width, rows = touched / tp, float(ie), routed / tp
                # dispatch + combine all-to-all of this GPU's routed tokens, as an all-reduce of half the bytes
                moe_comm = 2 * self.allreduce_s(routed / tp * h * BYTES / 2)
            else:
                experts, width, rows = touched, ie / tp, routed
                moe_comm = one_ar
            ffn = (self.grouped_gemm_s(rows, experts, 2 * width, h) + self.grouped_gemm_s(rows, experts, h, width)
                   + self.gemm_s(ma, moe.num_experts, h)  # router
                   + self.elementwise_s("silu_mul", rows, width))
            if moe.num_shared_experts:
                shared = moe.num_shared_experts * ie / shard
                ffn = ffn + self.gemm_s(ma, 2 * shared, h) + self.gemm_s(ma, h, shared)
            total = total + self._layers_moe * (attn + norms + one_ar + ffn + moe_comm)
        return np.asarray(total, dtype=float)

    def lm_head_s(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, dtype=float)
        if self.data_parallel_attention and self.tp > 1:
            r, vocab = r / self.tp, float(self.model.vocab_size)
        else:
            vocab = self.model.vocab_size / self.tp
        return self.gemm_s(r, vocab, self.model.hidden_size) + self.elementwise_s("rmsnorm", r, self.model.hidden_size)

    def _rank_batch(self, b: int) -> int:
        """Decode sequences one GPU's attention serves: all of them, or its share under data-parallel attention."""
        return -(-b // self.tp) if self.data_parallel_attention else b

    def _tokens_s(self, m: int, r: int) -> float:
        """token_costs_s(m) + lm_head_s(r), from tables built vectorised for every count up to a power of 2."""
        if m >= len(self._token_table):
            size = 1 << max(12, int(m).bit_length())
            self._token_table = [0.0, *self.token_costs_s(np.arange(1, size, dtype=float)).tolist()]
            self._run_operands.clear()  # they hold values of the table replaced
        if r >= len(self._lm_table):
            size = 1 << max(10, int(r).bit_length())
            self._lm_table = [0.0, *self.lm_head_s(np.arange(1, size, dtype=float)).tolist()]
            self._run_operands.clear()
        return self._token_table[m] + self._lm_table[r]

    # -- attention ------------------------------------------------------------------------------------------
    def _attention_cols(self, b: np.ndarray, kv: np.ndarray) -> dict[str, np.ndarray]:
        return {"batch_size": b, "kv_tokens": kv, "num_heads": np.full_like(b, self.heads),
                "num_kv_heads": np.full_like(b, self.kv_heads), "head_dim": np.full_like(b, self.model.head_dim)}

    def decode_attention_s(self, b: np.ndarray, kv: np.ndarray) -> np.ndarray:
        """One layer's decode attention for batches of b sequences of kv context tokens (uniform)."""
        t: OpFit = self.fit.tables["generation_attention"]
        b = np.asarray(b, dtype=float)
        kv = np.asarray(kv, dtype=float)
        cols = self._attention_cols(b, kv)
        md = self.model
        if md.mla is None and md.kv_value_bytes == BYTES:
            return t.predict_s(cols, self.gpu)
        if md.mla is not None:
            a = md.mla
            latent = a.kv_lora_rank + a.qk_rope_head_dim
            flops = 2 * b * self.heads * kv * (latent + a.kv_lora_rank)
            nbytes = md.kv_value_bytes * b * kv * latent
        else:
            flops = 4 * b * self.heads * md.head_dim * kv
            nbytes = md.kv_value_bytes * b * kv * 2 * self.kv_heads * md.head_dim
        return t.predict_from_features(attention_features(b, flops, nbytes, self.gpu), cols)

    def _decode_row(self, b: int) -> np.ndarray:
        """log(decode_attention_s) of b sequences over _KV_GRID. Rows are built for _ROW_BLOCK batch sizes at once
        (a call of 16 rows costs two or three of one: most of it is per call; the values are elementwise, so each
        row has the same bits either way)."""
        row = self._decode_rows.get(b)
        if row is None:
            first = (b - 1) // _ROW_BLOCK * _ROW_BLOCK + 1
            sizes = np.repeat(np.arange(first, first + _ROW_BLOCK, dtype=float), len(_KV_GRID))
            block = np.log(self.decode_attention_s(sizes, np.tile(_KV_GRID, _ROW_BLOCK)))
            for j, r in enumerate(block.reshape(_ROW_BLOCK, len(_KV_GRID))):
                self._decode_rows[first + j] = r
            row = self._decode_rows[b]
        return row

    def _rising_row(self, b: int) -> tuple[list[float], float]:
        """The row of b as floats, and the context from which it never falls (measured kernels can be slower at a
        few tokens than at a few more)."""
        rising = self._rising_rows.get(b)
        if rising is None:
            row = self._decode_row(b)
            falls = np.flatnonzero(~(row[1:] >= row[:-1]))  # a NaN counts as a fall
            rising = self._rising_rows[b] = (row.tolist(), float(_KV_GRID[falls[-1] + 1]) if len(falls) else 0.0)
        return rising

    def _decode_attn_s(self, b: int, mean_kv: np.ndarray, max_kv: np.ndarray) -> np.ndarray:
        """One layer's decode attention of b sequences: the larger of b uniform sequences of the mean context and one
        of the longest, interpolated in log-log on the rows built once per batch size."""
        t = interp(np.log(mean_kv), _LOG_KV, self._decode_row(b))
        np.maximum(t, interp(np.log(max_kv), _LOG_KV, self._decode_row(1)), out=t)
        return np.exp(t, out=t)

    def _sides(self, b: int, mean_first: float, mean_last: float, longest_first: float,
               longest_last: float) -> tuple[bool, bool]:
        """Which sides of the decode attention max(b sequences of the mean context, one of the longest) a step, or a
        run of steps whose contexts grow from the firsts to the lasts, must compute: (the mean side, the longest's).
        Both when neither side is above the other throughout by far more than rounding (the sides' values taken in
        plain Python on the same rows: bounds, not step times; over a run, each side rises only where its row
        rises, past a few tokens). One sequence's side alone where the two are the same row and the same contexts."""
        if b == 1 and mean_first == longest_first:
            return True, False  # one row, the same contexts at every step: the same values
        if mean_first <= 0.0 or longest_first <= 0.0:
            return True, True
        row_b, rises_b = self._rising_row(b)
        row_1, rises_1 = self._rising_row(1)
        if mean_last > mean_first and mean_first < rises_b or longest_last > longest_first and longest_first < rises_1:
            return True, True  # a run over contexts where a row falls: its side's first and last do not bound it
        margin = 2 * _DOMINANCE_MARGIN_LOG_S
        if _log_attention_near(row_b, mean_first) > _log_attention_near(row_1, longest_last) + margin:
            return True, False
        if _log_attention_near(row_1, longest_first) > _log_attention_near(row_b, mean_last) + margin:
            return False, True
        return True, True

    def _decode_attn_one_s(self, b: int, mean_kv: float, max_kv: float) -> float:
        """_decode_attn_s for one step, through the same numpy functions: math.exp and math.log need not round as
        numpy's vector loops do, and a step of a run (decode_run_stats_s) must equal the same step taken alone to
        the last bit. Only the sides `_sides` names are computed."""
        with_mean, with_max = self._sides(b, mean_kv, mean_kv, max_kv, max_kv)
        if not with_max:
            return float(np_exp(interp(np_log(mean_kv), _LOG_KV, self._decode_row(b))))
        if not with_mean:
            return float(np_exp(interp(np_log(max_kv), _LOG_KV, self._decode_row(1))))
        log_mean, log_max = np_log(np.array((mean_kv, max_kv))).tolist()
        return float(np_exp(max(interp(log_mean, _LOG_KV, self._decode_row(b)),
                                interp(log_max, _LOG_KV, self._decode_row(1)))))

    def prefill_attention_s(self, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """One layer's prefill attention, one call per chunk (new tokens after `cached` tokens)."""
        t: OpFit = self.fit.tables["context_attention"]
        new = np.asarray(new, dtype=float)
        cached = np.asarray(cached, dtype=float)
        ones = np.ones_like(new)
        md = self.model
        cols = {"batch_size": ones, "new_tokens": new, "cached_tokens": cached, "num_heads": ones * self.heads,
                "num_kv_heads": ones * self.kv_heads, "head_dim": ones * md.head_dim}
        if md.mla is None and md.kv_value_bytes == BYTES:
            return t.predict_s(cols, self.gpu)
        pairs = causal_pairs(new, cached)
        if md.mla is not None:
            a = md.mla
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            flops = 2 * self.heads * pairs * (qk + a.v_head_dim)
            nbytes = BYTES * self.heads * (new * (qk + a.v_head_dim) + (new + cached) * (qk + a.v_head_dim))
        else:
            flops = 4 * self.heads * md.head_dim * pairs
            nbytes = md.kv_value_bytes * md.head_dim * (2 * new * self.heads + 4 * (new + cached) * self.kv_heads)
        return t.predict_from_features(attention_features(ones, flops, nbytes, self.gpu), cols)

    def _prefill_attn_s(self, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """prefill_attention_s interpolated (bilinear in log new tokens, log 1 + cached tokens) on a table built
        once per replica: the per-step cost stays a few numpy calls."""
        if self._prefill_table is None:
            nn, cc = np.meshgrid(_NEW_GRID, _CACHED_GRID, indexing="ij")
            self._prefill_table = np.log(self.prefill_attention_s(nn.ravel(), cc.ravel())).reshape(nn.shape)
        x = np.log(np.clip(new.astype(float), 1.0, _NEW_GRID[-1]))
        y = np.log1p(np.clip(cached.astype(float), 0.0, _CACHED_GRID[-1]))
        i = np.clip(np.searchsorted(_LOG_NEW, x, side="right") - 1, 0, len(_LOG_NEW) - 2)
        j = np.clip(np.searchsorted(_LOG_CACHED, y, side="right") - 1, 0, len(_LOG_CACHED) - 2)
        wx = (x - _LOG_NEW[i]) / (_LOG_NEW[i + 1] - _LOG_NEW[i])
        wy = (y - _LOG_CACHED[j]) / (_LOG_CACHED[j + 1] - _LOG_CACHED[j])
        t = self._prefill_table
        v = ((1 - wx) * (1 - wy) * t[i, j] + wx * (1 - wy) * t[i + 1, j] + (1 - wx) * wy * t[i, j + 1]
             + wx * wy * t[i + 1, j + 1])
        return np.exp(v)

    def _prefill_attn_one_s(self, new: float, cached: float) -> float:
        """_prefill_attn_s for one chunk, in plain Python."""
        if self._prefill_table is None:
            self._prefill_attn_s(np.ones(1), np.zeros(1))
        assert self._prefill_table is not None
        rows = self._prefill_rows
        if rows is None:
            rows = self._prefill_rows = self._prefill_table.tolist()
        x = math.log(min(max(new, 1.0), _NEW_LIST[-1]))
        y = math.log1p(min(max(cached, 0.0), _CACHED_LIST[-1]))
        i = min(max(bisect_right(_LOG_NEW_LIST, x) - 1, 0), len(_LOG_NEW_LIST) - 2)
        j = min(max(bisect_right(_LOG_CACHED_LIST, y) - 1, 0), len(_LOG_CACHED_LIST) - 2)
        wx = (x - _LOG_NEW_LIST[i]) / (_LOG_NEW_LIST[i + 1] - _LOG_NEW_LIST[i])
        wy = (y - _LOG_CACHED_LIST[j]) / (_LOG_CACHED_LIST[j + 1] - _LOG_CACHED_LIST[j])
        low: list[float] = rows[i]  # typed rows: native float arithmetic, the same IEEE operations
        high: list[float] = rows[i + 1]
        return math.exp((1 - wx) * (1 - wy) * low[j] + wx * (1 - wy) * high[j] + (1 - wx) * wy * low[j + 1]
                        + wx * wy * high[j + 1])

    # -- the PerfModel protocol -----------------------------------------------------------------------------
    def step_time_s(self, batch: Batch) -> float:
        dec = batch.decode_context_tokens
        new, cached = batch.prefill_lists()
        n_dec = len(dec)
        m = n_dec + sum(new)
        r = n_dec + len(new)
        attn = 0.0
        if n_dec:
            attn += self._decode_attn_one_s(self._rank_batch(n_dec), batch.decode_context_sum / n_dec,
                                              batch.decode_context_max)
        if len(new) == 1:
            attn += self._prefill_attn_one_s(float(new[0]), float(cached[0]))
        elif new:
            chunks = self._prefill_attn_s(np.array(new, np.int64), np.array(cached, np.int64))
            if self.data_parallel_attention and self.tp > 1:  # chunks spread over the GPUs, none split
                attn += max(float(chunks.max()), float(chunks.sum()) / self.tp)
            else:
                attn += float(chunks.sum())
        return self.overhead_s + self._tokens_s(m, r) + self.model.num_layers * attn

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int,
                           caps: np.ndarray | None = None) -> StepTimes:
        n = len(decode_context_tokens)
        if caps is not None:  # kept contexts stop growing at their caps
            total, longest_s = kept_context_sums(decode_context_tokens, caps, num_steps)
            attn = self._decode_attn_s(self._rank_batch(n), total / n, longest_s)
            return self.overhead_s + self._tokens_s(n, n) + self.model.num_layers * attn
        return self.decode_run_stats_s(n, int(decode_context_tokens.sum()), int(decode_context_tokens.max()),
                                       num_steps)

    def decode_run_stats_s(self, n: int, context_sum: int, context_max: int, num_steps: int) -> StepTimes:
        # Step s's mean context is (context_sum + n*s) / n, as step_time_s computes it from that step's batch
        # (not context_sum / n + s, which can round differently); its longest is context_max + s. Only the sides of
        # the attention `_sides` names for the whole run are computed.
        b = self._rank_batch(n)
        last = num_steps - 1
        with_mean, with_max = self._sides(b, context_sum / n, (context_sum + n * last) / n, float(context_max),
                                          float(context_max + last))
        # context_sum + n*s and context_max + s are whole numbers, exact as floats: np.arange gives them in one call.
        operands = self._run_operands.get(n)
        if operands is None:
            operands = self._run_operands[n] = (np.full((), float(n)),
                                                np.full((), self.overhead_s + self._tokens_s(n, n)))
        per_step, outside = operands  # the same doubles as float(n) and overhead_s + _tokens_s(n, n)
        attn: np.ndarray | None = None
        if with_mean:
            mean = np_arange(float(context_sum), float(context_sum + n * num_steps), float(n))
            np_true_divide(mean, per_step, mean)  # ufunc calls with their outputs: in-place operators cost about twice
            attn = interp(np_log(mean, out=mean), _LOG_KV, self._decode_row(b))
        if with_max:
            longest = np_arange(float(context_max), float(context_max + num_steps))
            longest_attn = interp(np_log(longest, out=longest), _LOG_KV, self._decode_row(1))
            attn = longest_attn if attn is None else np_maximum(attn, longest_attn, out=attn)
        assert attn is not None
        np_exp(attn, out=attn)
        # (overhead + tokens) + layers * attn, step_time_s's operations, in place
        np_multiply(attn, self._layers_0d, attn)
        np_add(attn, outside, attn)
        # A short run's times as a list (StepTimes): the same floats (tolist is exact).
        return attn.tolist() if num_steps <= _LIST_STEPS else attn
