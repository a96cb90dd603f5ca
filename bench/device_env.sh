# Sourced by the device scripts (bench/device_check.sh, bench/device_hf.sh): where logs go
# ($OUT), the Python to use ($PY), and the import path (the repo, and the pure-Python
# packages the device image lacks, carried in .whl/site).
set -u
OUT=${OUT:-/tmp/rnnjax_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site:$PYTHONPATH"
PY=${PYTHON:-python3}
