#!/usr/bin/env bash
# Issue 8 and issue 5 measurements on one GPU host (1, 2 or 4 GPUs).
#   benchmarks/run_all.sh OUT PART [PART...]
#   PART: 3840 | 3840-ctas | 2048 | 1024 | graph | reuse | reference | ref-3840 | ref-2048 | e2e | e2e-heuristic |
#         reproject
# GPU counts: 1 2 4, less those the host lacks (GPUS="1 2" overrides); reference and end-to-end cases that need
# more GPUs than the host has are left out and say so.
# Parts run in the order given; each writes under OUT and a failed part does not stop the next. A device call is
# limited to 10 minutes, so start it detached and read OUT from later calls (docs/benchmarks.md, "Reproducing"):
#   setsid nohup benchmarks/run_all.sh /tmp/out e2e graph ref-3840 3840 >/tmp/out.log 2>&1 &
# (the kernel profile is separate: benchmarks/profile_gpu.py on one GPU)
# Join the bench parts here afterwards:
#   python benchmarks/bench.py --merge OUT/bench-*/bench.json --out-dir benchmarks/results
# The trt-distri package and ONNX Runtime GPU must be importable; the reference parts also need .reference/
# (benchmarks/reference/prepare.sh).
set -uo pipefail
limit() { timeout -k 30 "$@"; }  # SIGTERM: the scripts unwind and stop the rank processes they started
out=${1:?usage: run_all.sh OUT PART [PART...]}
shift
[ $# -gt 0 ] || { echo "usage: run_all.sh OUT PART [PART...]" >&2; exit 2; }
mkdir -p "$out"
ngpu=$(python -c 'import torch; print(torch.cuda.device_count())') || exit 1
fits() {  # SIZE:GPUS
  [ "${1#*:}" -le "$ngpu" ] || { echo "run_all.sh: $1 left out: needs ${1#*:} GPUs, the host has $ngpu"; false; }
}
GPUS=${GPUS:-$(for g in 1 2 4; do [ "$g" -le "$ngpu" ] && printf '%s ' "$g"; done)}
cases() { for c in "$@"; do fits "$c" >&2 && printf -- '--case %s ' "$c"; done; }

reference() {  # SIZE:GPUS ...
  (
    # the reference's env pins its own packages first; trt_distri (random weights, same seed) must stay importable
    here=$(python -c 'import pathlib, trt_distri; print(pathlib.Path(trt_distri.__file__).parents[1])') || exit 1
    bash .reference/wheels/p00/collect.sh >/dev/null && source /tmp/ref-wheels/env.sh || exit 1
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$here"
    for run in "$@"; do
      fits "$run" || continue
      size=${run%:*} gpus=${run#*:}
      # rank 0 writes its JSON before teardown; a 4-rank teardown once hung, hence the timeout
      timeout 240 python3 -m torch.distributed.run --nproc_per_node "$gpus" benchmarks/reference/run_distrifuser.py \
        --size "$size" --steps 10 --warmup 4 --no-split-batch --out "$out/reference/ref-$size-g$gpus.json"
    done
  )
}

for part in "$@"; do
  echo "=== $(date -Is) part $part"
  case "$part" in
    3840)
      limit 560 python benchmarks/bench.py --sizes 3840 --gpus $GPUS --split both --torch-baseline --root /tmp/b3840 \
        --out-dir "$out/bench-3840" ;;
    3840-ctas)  # NCCL kernels on fewer SMs (NCCL_MAX_CTAS, default 4 here): does the exchange overhead drop?
      NCCL_MAX_CTAS=${CTAS:-4} limit 400 python benchmarks/bench.py --sizes 3840 --gpus $GPUS --split no \
        --root /tmp/c3840 --out-dir "$out/ctas-3840" ;;  # not bench-*: kept out of the merge
    2048)
      limit 560 python benchmarks/bench.py --sizes 2048 --gpus $GPUS --split both --torch-baseline --root /tmp/b2048 \
        --out-dir "$out/bench-2048" ;;
    1024)
      limit 400 python benchmarks/bench.py --sizes 1024 --gpus $GPUS --split both --root /tmp/b1024 \
        --out-dir "$out/bench-1024" ;;
    graph)  # each configuration without, then with ONNX Runtime CUDA graphs; small sizes are launch-bound
      limit 420 python benchmarks/bench.py --sizes 1024 --gpus $GPUS --split both --cuda-graph both --root /tmp/g1024 \
        --out-dir "$out/bench-g1024"
      limit 300 python benchmarks/bench.py --sizes 2048 --gpus $GPUS --split no --cuda-graph both --root /tmp/g2048 \
        --out-dir "$out/bench-g2048" ;;
    reuse)  # the API's rank processes kept loaded between generations, CUDA graphs by default (tiny pipeline)
      limit 300 python benchmarks/reuse_check.py --gpus "$(echo $GPUS | awk '{print $NF}')" \
        --out "$out/reuse/reuse_check.json" ;;
    reference) reference 2048:2 2048:4 3840:2 3840:4 ;;
    ref-3840) reference 3840:2 3840:4 ;;
    ref-2048) reference 2048:2 2048:4 ;;
    e2e)
      limit 560 python benchmarks/end_to_end_gpu.py $(cases 2048:2 3840:4) --steps 30 --root /tmp/e2e \
        --parallel-export --out "$out/e2e/end_to_end_gpu.json" --bench "$out"/bench-*/bench.json ;;
    e2e-heuristic)  # the same cases (exports reused) with cuDNN's heuristic algorithm choice: first-run cost
      TRT_DISTRI_ORT_CONV_ALGO_SEARCH=HEURISTIC limit 400 python benchmarks/end_to_end_gpu.py \
        $(cases 2048:2 3840:4) --steps 30 --root /tmp/e2e --out "$out/e2e/end_to_end_gpu_heuristic.json" ;;
    reproject)  # the e2e projection from bench parts that ran after it
      python benchmarks/end_to_end_gpu.py --reproject --out "$out/e2e/end_to_end_gpu.json" \
        --bench "$out"/bench-*/bench.json ;;
    *) echo "run_all.sh: unknown part '$part'. Fix: one of 3840, 3840-ctas, 2048, 1024, graph, reuse, reference, ref-3840," \
         "ref-2048, e2e, e2e-heuristic, reproject" >&2
       (exit 2) ;;
  esac
  rc=$?
  echo "=== $(date -Is) part $part done (rc $rc)"
done
echo "=== $(date -Is) all parts done"
