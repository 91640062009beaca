#!/usr/bin/env bash
# Every model benchmark of docs/PERFORMANCE.md in one run, results as JSON in $1 (default
# benchmarks/results). On a CUDA machine: the base and demo configs in bf16 and the
# COCO-5k-sized re-ranking evaluation; on a CPU: the demo config in fp32, and in bf16 where the
# CPU multiplies it natively.
set -euo pipefail
out=${1:-benchmarks/results}
here=$(dirname "$0")
py=${PYTHON:-python}
mkdir -p "$out"
failed=0
row() {  # one benchmark; a failure is reported and the others still run
  "$@" || { echo "FAILED: $*" >&2; failed=1; }
}
if $py -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  base="$here/pretrain_throughput.py --config base --device cuda --precision bf16 --steps 10"
  # the 40% target first: compiled and eager at batch 256, each with the profiler's top kernels
  row $py $base --batch-size 256 --compile inductor --profile --out "$out/pretrain_base_bf16_b256_compiled.json"
  row $py $base --batch-size 256 --profile --out "$out/pretrain_base_bf16_b256.json"
  row $py "$here/rerank.py" --config base --device cuda --precision bf16 --images 5000 --k-c 128 --k-i 64 \
    --compile inductor --out "$out/rerank_coco5k_bf16_compiled.json"
  row $py "$here/rerank.py" --config base --device cuda --precision bf16 --images 5000 --k-c 128 --k-i 64 \
    --out "$out/rerank_coco5k_bf16.json"
  row $py $base --batch-size 512 --compile inductor --out "$out/pretrain_base_bf16_b512_compiled.json"
  row $py $base --batch-size 128 --memory --out "$out/pretrain_base_bf16.json"
  row $py "$here/pretrain_throughput.py" --config demo --device cuda --precision bf16 --batch-size 256 --steps 10 \
    --out "$out/pretrain_demo_bf16.json"
  row $py "$here/pretrain_throughput.py" --config base --device cuda --precision fp32 --batch-size 64 --steps 5 \
    --stages stage2 --out "$out/pretrain_base_fp32.json"
else
  row $py "$here/pretrain_throughput.py" --config demo --device cpu --precision fp32 --steps 10 \
    --out "$out/pretrain_demo_fp32.json"
  # what the demo preset's precision "auto" picks on a CPU with AMX or AVX512-BF16
  if $py -c "import sys; from mvptr.core.precision import native_bf16; sys.exit(not native_bf16('cpu'))"; then
    row $py "$here/pretrain_throughput.py" --config demo --device cpu --precision bf16 --steps 10 \
      --out "$out/pretrain_demo_bf16.json"
  fi
  row $py "$here/rerank.py" --config demo --device cpu --precision fp32 --images 500 --k-c 16 --k-i 8 \
    --baseline-queries 100 --out "$out/rerank_demo_fp32.json"
fi
exit $failed
