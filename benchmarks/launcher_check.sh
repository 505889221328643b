#!/usr/bin/env bash
# GPU check (issue 16): a torchrun launch (`trt-distri run --launcher env`) gives the same latents as the built-in
# launcher (one process per GPU started by trt-distri), on a host with 2 GPUs.
#
#   bash benchmarks/launcher_check.sh [WORKDIR]      (needs torchrun: pip install torch; GPUS=0,1 by default)
#
# Without WORKDIR the tiny SDXL pipeline is exported for 2 GPUs (fp16, 256x256, no guidance split). Both launches
# run the same seeds, with prompt (text encoders + UNet, latents out) and without (random conditioning), and write
# benchmarks/results/launcher_check.json: the maximum difference of the latents (expected 0: same engines, same
# GPUs, same collectives), device names, date and commands. Exits 1 when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/launcher_check}
GPUS=${GPUS:-0,1}
export CUDA_VISIBLE_DEVICES=$GPUS NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
WORK=${1:-$OUT/work}
if [ ! -f "$WORK/manifest.json" ]; then
    trt-distri export --random-weights tiny-sdxl --height 256 --width 256 --gpus 2 --no-cfg-split --dtype fp16 \
        -o "$WORK" --overwrite
fi
COMMON=(--device cuda --steps 10 --seed 7 --warmup-steps 2)
for mode in prompt random; do
    extra=()
    [ "$mode" = prompt ] && extra=(--prompt "a red fox" --output-type latent)
    trt-distri run "$WORK" "${COMMON[@]}" "${extra[@]}" --gpus 2 -o "$OUT/builtin-$mode.npy" --overwrite
    rm -rf "$OUT/rendezvous-$mode" && mkdir -p "$OUT/rendezvous-$mode"
    torchrun --standalone --nproc-per-node 2 -m trt_distri.cli run "$WORK" "${COMMON[@]}" "${extra[@]}" \
        --launcher env --rendezvous "$OUT/rendezvous-$mode" -o "$OUT/env-$mode.npy" --overwrite
done
python - "$OUT" "$WORK" <<'PY'
import datetime, json, subprocess, sys
from pathlib import Path
import numpy as np
out, work = Path(sys.argv[1]), sys.argv[2]
diff = {m: float(np.abs(np.load(out / f"builtin-{m}.npy") - np.load(out / f"env-{m}.npy")).max())
        for m in ("prompt", "random")}
gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                      text=True).stdout.split("\n")
result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "devices": [g for g in gpus if g],
          "workdir": work, "max_abs_diff": diff, "equal": all(v == 0.0 for v in diff.values()),
          "command": "bash benchmarks/launcher_check.sh " + work}
Path("benchmarks/results/launcher_check.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
sys.exit(0 if result["equal"] else 1)
PY
