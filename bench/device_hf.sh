#!/usr/bin/env bash
# The Hessian-free T = 200 rows of the long-term-dependency table with the paper's full
# protocol (the table's defaults: gradient on 10,000 fresh sequences, curvature and, on a
# separate batch, scoring on 1,000, up to 300 CG steps, μ = 1/30), for a lent GPU machine
# (jax preinstalled, no registry). About 9.5 minutes in all:
#   1. bench.hf_throughput at T = 200, H = 100, B = 1,000 (GN products beside the gradient);
#   2. one process per problem, all at once on the one GPU (its SEEDS in one vmapped
#      program, MINUTES of training each, every process under a hard time limit), at full
#      float32 matmul precision;
#   3. the rows as markdown.
# The rows go to $OUT/long_memory_table.jsonl; append them to docs/long_memory_table.jsonl
# here. Environment overrides (for a dry run on a CPU): PROBLEMS, T, METHODS, SEEDS,
# MINUTES, WAIT (seconds per process), TAG, EXTRA (more flags for the table).
# The rows of 2026-12-04 (docs/results.md) were SEEDS=0 TAG=gpu-full-protocol-8-at-once:
# eight processes kept the GPU busy, each at about an eighth of one process's rate.
#
#   bash bench/device_hf.sh
source bench/device_env.sh
export JAX_DEFAULT_MATMUL_PRECISION=highest  # CG wants float32 products, not TF32
PROBLEMS=${PROBLEMS:-addition multiplication temporal_order temporal_order3 permutation memorization5 memorization20 xor}
T=${T:-200} METHODS=${METHODS:-hf_sd} SEEDS=${SEEDS:-0,1,2} MINUTES=${MINUTES:-4.5}
WAIT=${WAIT:-440} TAG=${TAG:-gpu-full-protocol-8-at-once-vmapped} EXTRA=${EXTRA:-}
LOGS=$(mktemp -d)

{ date -u; nvidia-smi -L 2>/dev/null; nproc
  $PY -c "import jax; from rnnjax import device; print('jax', jax.__version__, device.summary())"
} 2>&1 | tee "$OUT/env.txt"

timeout 60 $PY -m bench.hf_throughput --seq_len="$T" --batch=1000 2>&1 | tee "$OUT/throughput.txt"

# GPU use while the problems train side by side (every 15 s)
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 \
  > "$OUT/smi.txt" 2>&1 &)
for problem in $PROBLEMS; do
  timeout "$WAIT" $PY -m experiments.long_memory_table --results="$LOGS/$problem.jsonl" \
    --tag="$TAG" --problems="$problem" --lengths="$T" --methods="$METHODS" --seeds="$SEEDS" \
    --max_minutes="$MINUTES" --vmap_seeds --noprogress $EXTRA > "$LOGS/$problem.txt" 2>&1 &
done
wait
pkill -f "nvidia-smi --query-gpu" 2>/dev/null

for problem in $PROBLEMS; do
  echo "== $problem"; tail -n 25 "$LOGS/$problem.txt"
  cat "$LOGS/$problem.jsonl" >> "$OUT/long_memory_table.jsonl" 2>/dev/null
done > "$OUT/hf_logs.txt"
$PY -m experiments.long_memory_table --results="$OUT/long_memory_table.jsonl" --summary \
  2>&1 | tee "$OUT/summary.md"
