#!/usr/bin/env bash
# The Hessian-free T = 200 rows of the long-term-dependency table with the paper's full
# protocol (gradient on 10,000 fresh sequences, curvature and scoring on 1,000, up to
# 300 CG steps), for a lent GPU machine (jax preinstalled, no registry). About 9 minutes:
# addition and temporal order, seed 0, 4 minutes of training each. The rows go to
# $OUT/long_memory_table.jsonl; append them to docs/long_memory_table.jsonl here.
#
#   bash bench/device_hf.sh
source bench/device_env.sh
{ date -u; nvidia-smi -L; $PY -c "import jax; print(jax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUT/hf_env.txt"
for problem in addition temporal_order; do
  timeout 270 $PY -m experiments.long_memory_table --results="$OUT/long_memory_table.jsonl" \
    --workdir=/tmp/rnnjax_hf_table --tag=gpu-full-protocol --problems=$problem --lengths=200 \
    --methods=hf_sd --seeds=0 --hf_gradient_batch=10000 --hf_curvature_batch=1000 \
    --cg_iters=300 --hf_score_on=gradient --max_minutes=4 --noprogress 2>&1 \
    | tee -a "$OUT/hf_table.txt"
done
$PY -m experiments.long_memory_table --results="$OUT/long_memory_table.jsonl" --summary \
  2>&1 | tee "$OUT/hf_summary.md"
