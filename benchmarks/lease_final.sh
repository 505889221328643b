#!/usr/bin/env bash
# One GPU lease for issues 14, 15, 16, 19 and 20: trt-distri and the reference (distrifuser) in the same lease,
# measured the same way (device-event step medians; peak nvidia-smi memory.used per GPU).
#   benchmarks/lease_final.sh OUT PART [PART...]
#   PART: smoke | 2048 | ref-2048 | first-image | 3840 | ref-3840 | cap-3840 | 1024 | ref-1024   (2 GPUs)
#       | SIZE-gN (trt-distri and PyTorch eager on N GPUs) | nhwc-SIZE-gN (trt-distri, NHWC convolutions)
#       | plainwarmup-SIZE-gN (trt-distri, warm-up segments without CUDA graphs: memory against warm-up speed)
#       | ref-SIZE-gN (the reference on N GPUs, both modes when N > 1) | first-image-gN | lora-gN | serve-gN
#       | release-gN | gpu-tests (pytest -m gpu)
# smoke: exports SDXL at 1024 for 1 GPU and checks the ORT preparation passes and the shared weights on CUDA
# (benchmarks/ort_fusion_check.py); a pass that fails there, or the sharing, is switched off for the later parts
# (TRT_DISTRI_ORT_PASSES, TRT_DISTRI_SHARE_WEIGHTS, written to OUT/env.sh) instead of failing every run.
# Needs the staged wheels (source /tmp/gpu-wheels/env.sh), the package installed, and .reference/ for ref-* parts.
# Start it detached: setsid nohup benchmarks/lease_final.sh /tmp/out smoke 2048 ... > /tmp/out/log.txt 2>&1 &
set -uo pipefail
out=${1:?usage: lease_final.sh OUT PART [PART...]}
shift
mkdir -p "$out/reference"
export NCCL_NVLS_ENABLE=0
touch "$out/env.sh"
limit() { timeout -k 30 "$@"; }

export_unet() {  # SIZE GPUS DIR
  python -c "from trt_distri.cli import main; raise SystemExit(main(['export', '--random-weights', 'sdxl',
    '--height', '$1', '--width', '$1', '--gpus', '$2', '--no-cfg-split', '--dtype', 'fp16', '--unet-only',
    '--overwrite', '-o', '$3']))"
}

check() { OUT="$out" limit 300 python benchmarks/ort_fusion_check.py /tmp/smoke-1024 --repeats 3 --variants "$@"; }
smoke() {
  export_unet 1024 1 /tmp/smoke-1024 || return 1
  check none all && return 0
  # the reference variant fails only for the shared weights; a failing or wrong pass is left out of the rest
  local passes="none group_norm skip_layer_norm bias_split_gelu bias_add"
  if ! check $passes; then
    echo "export TRT_DISTRI_SHARE_WEIGHTS=0" >> "$out/env.sh"; source "$out/env.sh"
    check $passes || { echo "export TRT_DISTRI_ORT_PASSES=none" >> "$out/env.sh"; return 1; }
  fi
  passes=$(python -c "import json; r = json.load(open('$out/fusion_check_smoke-1024.json'))
print(','.join(r['passing_passes']) or 'none')")
  echo "export TRT_DISTRI_ORT_PASSES=$passes" >> "$out/env.sh"
}

reference() {  # SIZE GPUS MODE(split|patches)
  (
    here=$(python -c 'import pathlib, trt_distri; print(pathlib.Path(trt_distri.__file__).parents[1])') || exit 1
    bash .reference/wheels/p00/collect.sh >/dev/null && source /tmp/ref-wheels/env.sh || exit 1
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$here"
    flag=$([ "$3" = patches ] && echo --no-split-batch)
    result="$out/reference/ref-$1-g$2-$3.json"
    python "$here/benchmarks/peak_memory.py" --out "$out/reference/peak-ref-$1-g$2-$3.json" -- \
      timeout 300 python3 -m torch.distributed.run --nproc_per_node "$2" benchmarks/reference/run_distrifuser.py \
      --size "$1" --steps 10 --warmup 4 $flag --out "$result" &
    # its teardown has hung until the timeout after the result was written (lease D): 20 s after it, stop it
    local pid=$!
    while kill -0 $pid 2>/dev/null && [ ! -f "$result" ]; do sleep 2; done
    for _ in $(seq 10); do kill -0 $pid 2>/dev/null && sleep 2; done
    pkill -TERM -f "run_distrifuse[r].py --size $1" 2>/dev/null
    wait $pid
  )
}

bench() {  # SIZE NAME ARGS...
  local size=$1 name=$2; shift 2
  limit 560 python benchmarks/bench.py --sizes "$size" --root "/tmp/b$size" --out-dir "$out/$name" "$@"
}

for part in "$@"; do
  echo "=== $(date -Is) part $part"
  source "$out/env.sh"
  case "$part" in
    smoke) smoke ;;
    2048) bench 2048 bench-2048 --gpus 1 2 --split both --torch-baseline ;;
    ref-2048) reference 2048 2 patches; reference 2048 2 split ;;
    first-image) limit 500 python benchmarks/first_image.py --size 2048 --gpus 2 --steps 30 --root /tmp/fi \
                   --out "$out/first_image_2048.json" ;;
    3840) bench 3840 bench-3840 --gpus 1 2 --split both --torch-baseline --keep ;;
    ref-3840) reference 3840 2 patches; reference 3840 2 split ;;
    cap-3840)  # 3840 on 2 GPUs with all but 80 GiB of each GPU taken: does it fit an 80 GB card?
      TRT_DISTRI_DEVICE_MEMORY_CAP_GIB=80 limit 300 python -c "from trt_distri.cli import main; raise SystemExit(main(
        ['run', '/tmp/b3840/sdxl-3840-g2', '--device', 'cuda', '--gpus', '2', '--steps', '10', '--overwrite',
         '-o', '$out/cap-3840.npy']))"; echo "cap-3840 exit $?" | tee "$out/cap-3840.txt" ;;
    1024) bench 1024 bench-1024 --gpus 1 2 --split both --torch-baseline ;;
    ref-1024) reference 1024 2 split; reference 1024 2 patches ;;
    plainwarmup-[0-9]*-g[0-9]) size=$(echo "$part" | cut -d- -f2)  # warm-up segments without CUDA graphs
                               TRT_DISTRI_WARMUP_CUDA_GRAPH=0 bench "$size" "bench-$part" --gpus "${part#*-g}" ;;
    nhwc-[0-9]*-g[0-9]) size=$(echo "$part" | cut -d- -f2)
                        TRT_DISTRI_ORT_PREFER_NHWC=1 bench "$size" "bench-$part" --gpus "${part#*-g}" ;;
    [0-9]*-g[0-9]) bench "${part%-g*}" "bench-$part" --gpus "${part#*-g}" --torch-baseline ;;
    ref-[0-9]*-g1) reference "$(echo "$part" | cut -d- -f2)" 1 patches ;;
    ref-[0-9]*-g[0-9]) size=$(echo "$part" | cut -d- -f2); reference "$size" "${part#*-g}" split
                       reference "$size" "${part#*-g}" patches ;;
    first-image-g[0-9]) limit 500 python benchmarks/first_image.py --size 2048 --gpus "${part#*-g}" --steps 30 \
                          --root /tmp/fi --out "$out/first_image_2048_$part.json" ;;
    lora-g[0-9]) limit 500 python benchmarks/lora_switch_gpu.py --size 2048 --gpus "${part#*-g}" --root /tmp/lora \
                   --out "$out/lora_switch_$part.json" ;;
    serve-g[0-9]) limit 550 python benchmarks/serve_gpu.py --size 2048 --gpus "${part#*-g}" --requests 10 --steps 30 \
                    --root /tmp/serve-bench --out "$out/serve_gpu_$part.json" ;;
    release-g[0-9]) limit 300 python benchmarks/release_check.py --gpus "${part#*-g}" --cycles 5 \
                      --out "$out/release_check_$part.json" ;;
    gpu-tests) limit 500 python -m pytest -q -rs -m gpu -p no:cacheprovider tests/runtime/test_interrupt.py \
                 tests/serve/test_serve_process.py tests/engines/test_backend_contract.py 2>&1 | tee "$out/gpu_tests.txt" ;;
    *) echo "lease_final.sh: unknown part '$part'" >&2 ;;
  esac
  echo "=== $(date -Is) part $part done (rc $?)"
done
echo "=== $(date -Is) all parts done"
