# A user's script without an `if __name__ == "__main__":` guard that starts rank processes (as the API does on
# GPUs): run by test_launch.py as `python unguarded_script.py`. Its workers must not run this file again.
import sys

from launch_targets import echo

from trt_distri.runtime.launch import RankPool, WorkerSpec

print("script body ran", flush=True)
pool = RankPool(echo, [WorkerSpec(r, r, {}) for r in range(2)], timeout_s=60)
try:
    print("results", pool.call("x", timeout_s=60), flush=True)
finally:
    pool.close()
sys.exit(0)
