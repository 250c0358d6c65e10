#!/usr/bin/env bash
# The GPU checks of the operator in one run, for a machine with a CUDA GPU, its own torch and
# no network. The steps run in this order, most needed first, each with its own time limit, and
# those past DEADLINE are cut short or skipped (a failed step does not stop the later ones):
#
#   1. build the extension in place against that machine's torch (its GPU's architecture only),
#      then a smoke run of every compiled kernel (a failure or a hang there stops the script);
#   2. benchmarks/tune_triton.py --compare: the compiled WMMA kernels and the Triton kernels,
#      each on tensor cores and in float32, at the benchmark shapes (N = 64): per call, kernel
#      time and share of the roofline (section kernels-compare), within its own budget;
#   3. the CUDA tests: tests/test_ops.py and tests/test_measurement.py (CUDA cases only:
#      layouts, misaligned storage, empty inputs, CUDA-graph capture, grid limits, ...);
#   4. the operator's CUDA tests through the Triton kernels (EQUIFAST_CUDA_KERNEL=triton), then
#      tests/test_ops_triton.py natively;
#   5. if time is left: benchmarks/run_ratios.py --device cuda (each shape against bmm and the
#      roofline), the compiled kernels' opt-in single pass and no-cluster modes under the tests,
#      end to end on ResNet-50 (CUDA and Triton kernels) and tune_triton.py's tile search;
#   6. compute-sanitizer memcheck and racecheck (where installed), and Nsight Compute counters
#      of the tile kernels at 64 @ 56x56 and 2048 @ 7x7 (where installed).
#
#   OUT=some/folder DEADLINE=420 bash benchmarks/gpu_check.sh
#
# DEADLINE (seconds, default 420) should be the device time left less the machine's start; the
# steps' times are in log.txt (the build's on the GPU machine is not yet recorded). Everything
# lands in $OUT (default runs/gpu_check): log.txt, and RESULTS.md, a copy of
# benchmarks/RESULTS.md with the GPU sections added, to merge back by hand. The exit status is
# that of the tests.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

# Steps past DEADLINE seconds are cut short or skipped (see above).
DEADLINE=${DEADLINE:-420}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log its output and its time
  local name=$1 limit=$2
  shift 2
  if ((DEADLINE - SECONDS < limit)); then limit=$((DEADLINE - SECONDS)); fi
  if ((limit < 10)); then echo "=== $name: skipped (deadline)" | tee -a "$LOG"; return 124; fi
  echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$LOG" 2>&1
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>>"$LOG") ||
  { echo "gpu_check.sh: no CUDA device is visible to $PY's torch" | tee -a "$LOG"; exit 2; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
step build 240 $PY setup.py build_ext --inplace || { tail -40 "$LOG"; exit 1; }
# A few calls of each kernel (both layouts, every input type; 24 x 24 maps: clusters of 2).
SANITIZE="
import os
import torch
from equifast import ops
from equifast.transforms import Rotation, Translation
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for k, side, fmt in ((70, 24, torch.contiguous_format), (130, 5, torch.channels_last)):
        fx = torch.randn(3, k, side, side, device='cuda', dtype=dtype).contiguous(memory_format=fmt)
        for t in (Translation(2, -1), Rotation(1)):
            a, b = t.index_map((side, side), (side, side), device='cuda')
            for tc in (True, False):
                ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, tc)
            os.environ['EQUIFAST_CUDA_SINGLE_PASS'] = '1'
            ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, True)
            del os.environ['EQUIFAST_CUDA_SINGLE_PASS']
torch.cuda.synchronize()
print('sanitizer calls done')"
# A kernel that fails or hangs here would fail or hang every later step: stop at once.
step smoke 60 $PY -c "$SANITIZE" || { tail -40 "$LOG"; exit 1; }
# The two kernels' speed first: a script with its own budget writes its table before the limit.
step kernels 150 $PY benchmarks/tune_triton.py --compare --calls 10 \
  --budget $((DEADLINE - SECONDS - 30 < 120 ? DEADLINE - SECONDS - 30 : 120)) --output "$OUT/RESULTS.md"
step tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_measurement.py -k cuda
tests=$?
# The Triton kernels under the operator's CUDA tests, then their own tests (test_ops_triton.py).
step tests-triton-operator 120 env EQUIFAST_CUDA_KERNEL=triton $PY -m pytest -q -p no:cacheprovider \
  tests/test_ops.py -k cuda || tests=1
step tests-triton 150 $PY -m pytest -q -p no:cacheprovider tests/test_ops_triton.py -k "not compiles" || tests=1
step ratios 120 $PY benchmarks/run_ratios.py --device cuda --output "$OUT/RESULTS.md"
step tests-single-pass 120 env EQUIFAST_CUDA_SINGLE_PASS=1 $PY -m pytest -q -p no:cacheprovider \
  tests/test_ops.py tests/test_measurement.py -k cuda || tests=1
step tests-no-clusters 90 env EQUIFAST_CUDA_MAX_CLUSTER=1 $PY -m pytest -q -p no:cacheprovider \
  tests/test_ops.py -k cuda || tests=1
# 3 alternated rounds (after a warm-up round), not the CPU default of 7: the step's time limit
step end-to-end 120 $PY benchmarks/run_end_to_end.py --model resnet50 --size 224 --batch 64 \
  --images ${E2E_IMAGES:-64} --rounds 3 --device cuda --output "$OUT/RESULTS.md" --profile
step end-to-end-triton 90 env EQUIFAST_CUDA_KERNEL=triton $PY benchmarks/run_end_to_end.py \
  --model resnet50 --size 224 --batch 64 --images 64 --rounds 2 --device cuda --no-write --profile
# its own budget from what the deadline leaves, less the defaults' compiles and timings, which
# it does not count (a step cut short by the deadline writes no table)
tune_budget=$((DEADLINE - SECONDS - 40 < 110 ? DEADLINE - SECONDS - 40 : 110))
if ((tune_budget >= 20)); then
  step tune-triton 150 $PY benchmarks/tune_triton.py --budget $tune_budget --output "$OUT/RESULTS.md"
else
  echo "=== tune-triton: skipped (deadline)" | tee -a "$LOG"
fi
if command -v compute-sanitizer >/dev/null; then
  step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 $PY -c "$SANITIZE"
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 $PY -c "$SANITIZE"
fi
if command -v ncu >/dev/null; then
  # Hardware counters of each kernel at the shapes at both ends: memory-bound 64 @ 56x56 and
  # compute-bound 2048 @ 7x7 (the two passes, then the single pass).
  step ncu 60 ncu --section SpeedOfLight --section LaunchStats --section Occupancy \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section SourceCounters -k regex:"tile_kernel|_similarity_tiles" $PY -c "
import os
import torch
from equifast import ops
from equifast.transforms import Translation
for k, side in ((64, 56), (2048, 7)):
    fx = torch.randn(64, k, side, side, device='cuda')
    a, b = Translation(1, 1).index_map((side, side), (224, 224), device='cuda')
    ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, True)
    os.environ['EQUIFAST_CUDA_SINGLE_PASS'] = '1'
    ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, True)
    del os.environ['EQUIFAST_CUDA_SINGLE_PASS']
    os.environ['EQUIFAST_CUDA_KERNEL'] = 'triton'
    ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, True)
    del os.environ['EQUIFAST_CUDA_KERNEL']
torch.cuda.synchronize()"
fi
grep -E "passed|failed|error" "$LOG" | tail -5
exit $tests
