"""The fast-BLAS difference on MLX's CPU backend: a float32 matmul with the Linux mlx[cpu] wheel's
reference BLAS against the same with the library `mlx-partner` chooses (probed, see
mlx_partner/blas.py), preloaded as every MLX command does. Each variant runs in its own process,
since the BLAS is chosen when the process starts. Prints the chosen library, its kernel, the
thread count, and the median of `--reps` timed matmuls for each.

    python bench/blas_matmul.py              # 1024 x 1024, median of 5
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
times = []
for _ in range(reps):
    t = time.perf_counter(); mx.eval(a @ b); times.append(time.perf_counter() - t)
median = sorted(times)[len(times) // 2]
print(json.dumps({"gflops": 2 * n**3 / median / 1e9, "seconds": median}))
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
    import os

    from mlx_partner import blas

    print(f"load average {os.getloadavg()[0]:.2f}; {a.size}x{a.size} float32 matmul, median of {a.reps}")
    ref = measure(plain_env(), a.size, a.reps)
    print(f"  reference BLAS (mlx[cpu] wheel): {ref:8.1f} GFLOPS")
    env = fast_env()
    if env is None:
        print(f"  no fast BLAS passed the check: {blas.choose().passed_over}; {blas.FIX}.")
        return
    fast = measure(env, a.size, a.reps)
    print(f"  {env['MLX_PARTNER_BLAS_NAME']}: {fast:8.1f} GFLOPS  ({fast / ref:.0f}x the reference)")


if __name__ == "__main__":
    main()
