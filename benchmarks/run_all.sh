#!/usr/bin/env bash
# Issue 8 and issue 5 measurements on one 4-GPU host, in parts that each fit one device call (10 minutes).
#   benchmarks/run_all.sh OUT PART      PART: 3840 | 2048 | reference | e2e
# (the kernel profile is separate: benchmarks/profile_gpu.py on one GPU, see docs/benchmarks.md)
# (2048 also measures 1024, patches only; the reference's 1-GPU figure is bench.py's PyTorch CUDA-graph baseline)
# Run the parts on the same warm machine (one lease), then join them here:
#   python benchmarks/bench.py --merge OUT/bench-*/bench.json --out-dir benchmarks/results
# The trt-distri package and ONNX Runtime GPU must be importable (docs/benchmarks.md, "Reproducing");
# the reference part also needs .reference/ (benchmarks/reference/prepare.sh).
set -uo pipefail
out=${1:?usage: run_all.sh OUT PART}
part=${2:?usage: run_all.sh OUT PART}
mkdir -p "$out"
case "$part" in
  3840)
    python benchmarks/bench.py --sizes 3840 --gpus 1 2 4 --split both --torch-baseline --root /tmp/b3840 \
      --out-dir "$out/bench-3840" ;;
  2048)
    python benchmarks/bench.py --sizes 2048 --gpus 1 2 4 --split both --torch-baseline --root /tmp/b2048 \
      --out-dir "$out/bench-2048"
    python benchmarks/bench.py --sizes 1024 --gpus 1 2 4 --split no --root /tmp/b1024 --out-dir "$out/bench-1024" ;;
  reference)
    (
      bash .reference/wheels/p00/collect.sh >/dev/null && source /tmp/ref-wheels/env.sh || exit 1
      for run in 2048:2 2048:4 3840:2 3840:4; do
        size=${run%:*} gpus=${run#*:}
        # rank 0 writes its JSON before teardown; a 4-rank teardown once hung, hence the timeout
        timeout 240 python3 -m torch.distributed.run --nproc_per_node "$gpus" benchmarks/reference/run_distrifuser.py \
          --size "$size" --steps 10 --warmup 4 --no-split-batch --out "$out/reference/ref-$size-g$gpus.json"
      done
    ) ;;
  e2e)
    python benchmarks/end_to_end_gpu.py --case 2048:2 --case 3840:4 --steps 30 --root /tmp/e2e \
      --parallel-export --out "$out/e2e/end_to_end_gpu.json" --bench "$out"/bench-*/bench.json ;;
  *) echo "run_all.sh: unknown part '$part'. Fix: one of 3840, 2048, reference, e2e" >&2; exit 2 ;;
esac
