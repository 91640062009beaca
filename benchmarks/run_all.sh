#!/usr/bin/env bash
# Every model benchmark of docs/PERFORMANCE.md in one run, results as JSON in $1 (default
# benchmarks/results). On a CUDA machine: the base and demo configs in bf16 and the
# COCO-5k-sized re-ranking evaluation; on a CPU: the demo config in fp32.
set -euo pipefail
out=${1:-benchmarks/results}
here=$(dirname "$0")
py=${PYTHON:-python}
mkdir -p "$out"
if $py -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  $py "$here/pretrain_throughput.py" --config base --device cuda --precision bf16 --batch-size 128 --steps 10 \
    --memory --out "$out/pretrain_base_bf16.json"
  $py "$here/pretrain_throughput.py" --config base --device cuda --precision bf16 --batch-size 256 --steps 10 \
    --out "$out/pretrain_base_bf16_b256.json"
  $py "$here/pretrain_throughput.py" --config base --device cuda --precision bf16 --batch-size 256 --steps 10 \
    --compile inductor --out "$out/pretrain_base_bf16_b256_compiled.json"
  $py "$here/pretrain_throughput.py" --config demo --device cuda --precision bf16 --batch-size 256 --steps 10 \
    --out "$out/pretrain_demo_bf16.json"
  $py "$here/pretrain_throughput.py" --config base --device cuda --precision fp32 --batch-size 64 --steps 5 \
    --stages stage2 --out "$out/pretrain_base_fp32.json"
  $py "$here/rerank.py" --config base --device cuda --precision bf16 --images 5000 --k-c 128 --k-i 64 \
    --out "$out/rerank_coco5k_bf16.json"
else
  $py "$here/pretrain_throughput.py" --config demo --device cpu --precision fp32 --steps 10 \
    --out "$out/pretrain_demo_fp32.json"
  $py "$here/rerank.py" --config demo --device cpu --precision fp32 --images 500 --k-c 16 --k-i 8 \
    --baseline-queries 100 --out "$out/rerank_demo_fp32.json"
fi
