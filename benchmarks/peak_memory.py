"""Peak device memory per GPU as nvidia-smi reports it (memory.used, device-wide), sampled every 100 ms: the one
measurement used for trt-distri and the reference alike (issue 15).

As a wrapper:  python benchmarks/peak_memory.py --out peak.json -- COMMAND ARGS...
In a script:   with NvidiaSmiPeak() as peak: ...; peak.gib  ->  {gpu index: peak GiB}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def sample() -> dict[int, int]:
    """memory.used in MiB per GPU index; empty where nvidia-smi is missing or fails (no GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(i): int(m) for i, m in (line.split(",") for line in out.strip().splitlines())}


class NvidiaSmiPeak:
    """Samples in a thread between enter and exit; `gib` holds the peak per GPU, `baseline_gib` the first sample."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s, self.peak_mib, self.baseline_mib = interval_s, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for gpu, mib in sample().items():
                self.baseline_mib.setdefault(gpu, mib)
                self.peak_mib[gpu] = max(self.peak_mib.get(gpu, 0), mib)
            time.sleep(self.interval_s)

    def __enter__(self) -> "NvidiaSmiPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> dict[int, float]:
        return {g: round(m / 1024, 2) for g, m in sorted(self.peak_mib.items())}

    @property
    def baseline_gib(self) -> dict[int, float]:
        return {g: round(m / 1024, 2) for g, m in sorted(self.baseline_mib.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    start = time.perf_counter()
    with NvidiaSmiPeak() as peak:
        rc = subprocess.call(command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(command), "rc": rc, "peak_gib": peak.gib,
                                    "baseline_gib": peak.baseline_gib,
                                    "wall_s": round(time.perf_counter() - start, 2)}, indent=1))
    print(f"peak memory.used per GPU (GiB): {peak.gib}; exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
