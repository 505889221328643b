"""GPU check that generators give their device memory back (issue 16): create / generate / close, several times.

    python benchmarks/release_check.py [--gpus N] [--cycles 5] [--steps S] [--workdir W]
                                       [--out benchmarks/results/release_check.json]

Device memory in use on each GPU (nvidia-smi, every process) is read before the first cycle and after each close.
The first cycle may leave this process's CUDA context and ONNX Runtime's per-process state (text encoders and VAE
run here); every later cycle must come back to what the first left (within --tolerance-mib), and the rank
processes' memory must be gone (the difference to before the first cycle is reported). Exits 1 when a cycle grows.
Default work directory: the embedded tiny pipeline exported for N GPUs; pass a real one (--workdir) to see GBs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from trt_distri.api import Generator


def used_mib() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], check=True,
                         capture_output=True, text=True).stdout
    return [int(v) for v in out.split()]


def cycle(workdir: Path, steps: int) -> float:
    t0 = time.perf_counter()
    gen = Generator(workdir, device="cuda")
    try:
        gen.generate("a red fox", steps=steps)
        gen.generate("a blue fox", steps=steps)
    finally:
        gen.close()
    return round(time.perf_counter() - t0, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--tolerance-mib", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "release_check.json")
    args = ap.parse_args()
    if args.workdir is None:
        from trt_distri.embedded import embedded_workdir

        args.workdir = embedded_workdir(args.gpus)
    before = used_mib()
    after, seconds = [], []
    for _ in range(args.cycles):
        seconds.append(cycle(args.workdir, args.steps))
        time.sleep(1.0)  # the rank processes have exited; let the driver release their contexts
        after.append(used_mib())
    growth = [max(a - b for a, b in zip(later, after[0])) for later in after[1:]]
    ok = all(g <= args.tolerance_mib for g in growth)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "workdir": str(args.workdir),
              "gpus": args.gpus, "cycles": args.cycles, "steps": args.steps, "used_mib_before": before,
              "used_mib_after_each_close": after, "left_by_first_cycle_mib": [a - b for a, b in zip(after[0], before)],
              "growth_after_first_mib": growth, "cycle_s": seconds, "ok": ok,
              "command": " ".join(["python", *sys.argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
