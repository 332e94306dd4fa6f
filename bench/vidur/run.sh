#!/usr/bin/env bash
# Vidur (microsoft/vidur @ 7d47513363ec447a741ac5e47241580b47724fbf) on BLIS's speed workload, A100 / Llama-3-8B.
# usage: [SCHED=vllm|sarathi] VIDUR_HOME=DIR run.sh NUM_REQUESTS TAG [extra vidur flags...]
# VIDUR_HOME holds src/ (the Vidur checkout), venv/, traces/, profiling/, and gets cache/, out/, logs/ (see README.md).
# Runs from the Vidur source root (its relative ./data/profiling paths for the MLP and network profiles).
set -euo pipefail
N=$1; TAG=$2; shift 2
H=${VIDUR_HOME:?set VIDUR_HOME (see bench/vidur/README.md)}
cd "$H/src"
mkdir -p "$H/out" "$H/logs" "$H/cache"
RF=--random_forrest_execution_time_predictor_config
# SCHED=vllm (default): Vidur's vLLM-like scheduler (no chunked prefill), batch cap 256, 2048 tokens a batch.
# SCHED=sarathi: Sarathi-Serve chunked prefill, chunk 2048 (the token budget per iteration, decodes included), cap 256.
if [ "${SCHED:-vllm}" = sarathi ]; then
  SCHED_FLAGS=(--replica_scheduler_config_type sarathi --sarathi_scheduler_config_batch_size_cap 256
    --sarathi_scheduler_config_chunk_size 2048 --sarathi_scheduler_config_block_size 16
    --sarathi_scheduler_config_num_blocks 26312)
else
  SCHED_FLAGS=(--replica_scheduler_config_type vllm --vllm_scheduler_config_batch_size_cap 256
    --vllm_scheduler_config_max_tokens_in_batch 2048 --vllm_scheduler_config_block_size 16
    --vllm_scheduler_config_num_blocks 26312)
fi
exec "$H/venv/bin/python" -m vidur.main \
  --seed 42 \
  --replica_config_device a100 \
  --replica_config_model_name meta-llama/Meta-Llama-3-8B \
  --replica_config_tensor_parallel_size 1 \
  --replica_config_num_pipeline_stages 1 \
  --cluster_config_num_replicas 8 \
  --global_scheduler_config_type round_robin \
  "${SCHED_FLAGS[@]}" \
  --request_generator_config_type synthetic \
  --synthetic_request_generator_config_num_requests "$N" \
  --synthetic_request_generator_config_seed 42 \
  --length_generator_config_type trace \
  --trace_request_length_generator_config_trace_file "$H/traces/blis_speed_lengths.csv" \
  --trace_request_length_generator_config_max_tokens 16384 \
  --trace_request_length_generator_config_seed 42 \
  --interval_generator_config_type poisson \
  --poisson_request_interval_generator_config_qps 20 \
  --poisson_request_interval_generator_config_seed 42 \
  --execution_time_predictor_config_type random_forrest \
  $RF"_attention_input_file" "$H/profiling/compute/{DEVICE}/{MODEL}/attention.csv" \
  $RF"_prediction_max_prefill_chunk_size" 2048 \
  $RF"_prediction_max_batch_size" 256 \
  $RF"_prediction_max_tokens_per_request" 16384 \
  $RF"_num_training_job_threads" 1 \
  $RF"_num_estimators" 250 \
  $RF"_max_depth" 32 \
  $RF"_min_samples_split" 2 \
  --metrics_config_output_dir "$H/out/$TAG" \
  --metrics_config_cache_dir "$H/cache" \
  --no-metrics_config_store_plots \
  --no-metrics_config_enable_chrome_trace \
  --no-metrics_config_write_json_trace \
  "$@" > "$H/logs/$TAG.log" 2>&1
