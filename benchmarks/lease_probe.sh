#!/usr/bin/env bash
# One-GPU lease (issue 14): the ONNX Runtime preparation passes checked and timed pass by pass on real SDXL
# segments, then the 1-GPU UNet step against PyTorch eager at each size, in the same lease.
#   benchmarks/lease_probe.sh OUT [SIZE...]        (default sizes: 1024 2048)
# Needs the staged wheels (source /tmp/gpu-wheels/env.sh) and the package installed (see docs/benchmarks.md,
# "Reproducing"). Meant to run detached: setsid nohup benchmarks/lease_probe.sh /tmp/out 1024 2048 > log 2>&1 &
set -uo pipefail
out=${1:?usage: lease_probe.sh OUT [SIZE...]}
shift
sizes=${*:-1024 2048}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
for size in $sizes; do
  echo "=== $(date -Is) export $size"
  python -c "from trt_distri.cli import main; raise SystemExit(main(['export', '--random-weights', 'sdxl',
    '--height', '$size', '--width', '$size', '--gpus', '1', '--no-cfg-split', '--dtype', 'fp16', '--unet-only',
    '--overwrite', '-o', '/tmp/probe-$size']))" || continue
  echo "=== $(date -Is) fusion check $size"
  OUT="$out" timeout -k 30 420 python benchmarks/ort_fusion_check.py "/tmp/probe-$size" --repeats 5 \
    --variants none all group_norm skip_layer_norm bias_split_gelu bias_add 2>&1 | tee "$out/fusion-$size.log"
  rm -rf "/tmp/probe-$size"
done
echo "=== $(date -Is) bench 1 GPU: $sizes"
timeout -k 30 560 python benchmarks/bench.py --sizes $sizes --gpus 1 --split no --torch-baseline --root /tmp/pb \
  --out-dir "$out/bench-1gpu" 2>&1 | tail -40
echo "=== $(date -Is) done"
