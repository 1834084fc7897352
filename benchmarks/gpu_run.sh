#!/usr/bin/env bash
# One lease of a GPU machine (the device tool), everything in one call:
#   bash benchmarks/gpu_run.sh COMMIT        (OUT=<folder> for the results, default /tmp/gpu)
# 1. installs the wheel built here without a GPU (dist/gpu/*.whl, carried), the way a user
#    gets it; builds one there (sm of this GPU) only if that wheel does not load;
# 2. the CUDA tests (every test whose id says cuda), 12 processes;
# 3. compute-sanitizer memcheck and racecheck over benchmarks/cuda_smoke.py;
# 4. the step-kernel microbenchmark and the CUDA benchmark grid.
# Each stage has its own time limit, so one hang cannot eat the lease. At most 8 files land
# in $OUT (the device tool's limit): log.txt, tests.txt, junit.xml, sanitizer.txt, and the
# grid's json/md/png.
set -u
COMMIT=${1:-unknown}
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 FUSEDRNN_GIT_COMMIT=$COMMIT
T_TESTS=${T_TESTS:-240} T_SAN=${T_SAN:-60} END=${END:-520}  # END: seconds for the whole script
t0=$SECONDS
stage() { echo; echo "=== $* ($((SECONDS - t0)) s)"; }
{
  stage "environment"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  nproc

  stage "install the wheel built without a GPU"
  ls dist/gpu/*.whl && $PY -m pip install -q --no-deps --no-index --force-reinstall dist/gpu/*.whl
  check='import torch, fusedrnn, fusedrnn._C_cuda; x = torch.randn(3, 2, 4, device="cuda"); print(fusedrnn.__file__, fusedrnn.LSTM(4, 8).cuda()(x)[0].shape)'
  if ! (cd /tmp && $PY -c "$check"); then
    stage "that wheel does not load: building one here"
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
    rm -rf dist/built && FUSEDRNN_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16 \
      $PY -m pip wheel -q --no-build-isolation --no-deps -w dist/built . \
      && $PY -m pip install -q --no-deps --no-index --force-reinstall dist/built/*.whl
    (cd /tmp && $PY -c "$check") || { echo "fusedrnn does not load"; exit 1; }
  fi

  stage "CUDA tests"
  opts=""
  $PY -c "import xdist" 2>/dev/null && opts="$opts -n 12"
  $PY -c "import pytest_timeout" 2>/dev/null && opts="$opts --timeout 120"
  timeout "$T_TESTS" $PY -m pytest tests -k cuda -q -p no:cacheprovider $opts -rfE --junitxml="$OUT/junit.xml" > "$OUT/tests.txt" 2>&1
  echo "pytest exit $?"; tail -25 "$OUT/tests.txt"

  stage "compute-sanitizer"
  for tool in memcheck racecheck; do
    timeout "$T_SAN" compute-sanitizer --tool $tool --error-exitcode 9 \
      $PY benchmarks/cuda_smoke.py >> "$OUT/sanitizer.txt" 2>&1
    echo "$tool exit $?"
  done
  grep -E "ERROR SUMMARY|smoke done|max\|dy\|" "$OUT/sanitizer.txt" | tail -30

  stage "step kernels"
  timeout 60 $PY benchmarks/kernels.py --device cuda

  # The short grid first (its results are written only at its end), then the whole CUDA
  # grid in the time that is left.
  stage "benchmark grid: gpu-check"
  timeout 120 $PY -m fusedrnn bench --device cuda --grid gpu-check --budget 0.3 --out "$OUT" \
    --name cuda-gpu-check
  echo "bench exit $?"
  left=$((END - (SECONDS - t0)))
  if [ "$left" -gt 60 ]; then
    stage "benchmark grid: all ($left s left)"
    timeout "$left" $PY -m fusedrnn bench --device cuda --grid all --budget 0.3 --out "$OUT" \
      --no-reference --name cuda-all
    rc=$?; echo "bench exit $rc"
    [ "$rc" = 0 ] && rm -f "$OUT"/cuda-gpu-check.*  # its rows are in the whole grid; 8 files at most
  fi
  stage "done"
} 2>&1 | tee "$OUT/log.txt"
