#!/usr/bin/env bash
# The GPU checks of the operator in one run, for a machine with a CUDA GPU, its own torch and
# no network (about 8 minutes on an H200, build included; give it 9):
#
#   1. build the extension in place against that machine's torch (its GPU's architecture only);
#   2. the CUDA tests: tests/test_ops.py and tests/test_measurement.py (CUDA cases only), then
#      again with the opt-in single pass (EQUIFAST_CUDA_SINGLE_PASS=1) for every tensor-core case;
#   3. benchmarks/run_ratios.py --device cuda: each shape against bmm and the roofline, the
#      two-pass kernels (tensor cores, float32) and the single pass;
#   4. benchmarks/run_end_to_end.py on ResNet-50, 224x224, batch 64, shifts 1..32;
#   5. compute-sanitizer memcheck over a few calls of each kernel (where it is installed).
#
#   OUT=some/folder bash benchmarks/gpu_check.sh
#
# Everything lands in $OUT (default runs/gpu_check): log.txt, and RESULTS.md, a copy of
# benchmarks/RESULTS.md with the GPU sections added, to merge back by hand. Each step has its
# own time limit and a failed step does not stop the later ones; the exit status is that of
# the tests.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

# Steps past DEADLINE seconds (default 540: a 10-minute call with room for the transfers) are
# cut short or skipped.
DEADLINE=${DEADLINE:-540}

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
step tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_measurement.py -k cuda
tests=$?
step tests-single-pass 150 env EQUIFAST_CUDA_SINGLE_PASS=1 $PY -m pytest -q -p no:cacheprovider \
  tests/test_ops.py tests/test_measurement.py -k cuda || tests=1
step ratios 150 $PY benchmarks/run_ratios.py --device cuda --output "$OUT/RESULTS.md"
step end-to-end 120 $PY benchmarks/run_end_to_end.py --model resnet50 --size 224 --batch 64 \
  --images 256 --device cuda --output "$OUT/RESULTS.md"
if command -v compute-sanitizer >/dev/null; then
  step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 3 $PY -c "
import os
import torch
from equifast import ops
from equifast.transforms import Rotation, Translation
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for k, side, fmt in ((70, 9, torch.contiguous_format), (130, 5, torch.channels_last)):
        fx = torch.randn(3, k, side, side, device='cuda', dtype=dtype).contiguous(memory_format=fmt)
        for t in (Translation(2, -1), Rotation(1)):
            a, b = t.index_map((side, side), (side, side), device='cuda')
            for tc in (True, False):
                ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, tc)
            os.environ['EQUIFAST_CUDA_SINGLE_PASS'] = '1'
            ops.equivariance_scores(fx, fx.clone(), a, b, True, 1e-5, True)
            del os.environ['EQUIFAST_CUDA_SINGLE_PASS']
torch.cuda.synchronize()
print('memcheck calls done')"
fi
grep -E "passed|failed|error" "$LOG" | tail -5
exit $tests
