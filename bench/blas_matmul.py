"""The fast-BLAS difference on MLX's CPU backend: a float32 matmul with the Linux mlx[cpu] wheel's
reference BLAS against the same with OpenBLAS preloaded (what `mlx-partner` does for every MLX
command, see mlx_partner/blas.py). Each variant runs in its own process, since the BLAS is chosen
when the process starts.

    python bench/blas_matmul.py              # 1024 x 1024, best of 5
    python bench/blas_matmul.py --size 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import fast_env, plain_env  # noqa: E402

PROBE = r"""
import json, sys, time
import mlx.core as mx
n, reps = int(sys.argv[1]), int(sys.argv[2])
a = mx.random.normal((n, n)); b = mx.random.normal((n, n)); mx.eval(a, b)
mx.eval(a @ b)  # warm up
best = float("inf")
for _ in range(reps):
    t = time.perf_counter(); mx.eval(a @ b); best = min(best, time.perf_counter() - t)
print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "seconds": best}))
"""


def measure(env: dict[str, str], size: int, reps: int) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, str(size), str(reps)], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["gflops"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    ref = measure(plain_env(), a.size, a.reps)
    print(f"{a.size}x{a.size} float32 matmul, reference BLAS: {ref:8.1f} GFLOPS")
    env = fast_env()
    if env is None:
        print("OpenBLAS (pip install cmeel-openblas) is not available here: nothing to compare.")
        return
    fast = measure(env, a.size, a.reps)
    print(f"{a.size}x{a.size} float32 matmul, OpenBLAS:       {fast:8.1f} GFLOPS  ({fast / ref:.0f}x)")


if __name__ == "__main__":
    main()
